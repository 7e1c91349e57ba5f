//! The `two-site` scenario: geomirror as two sites with the WAN simulator
//! between them, and a single-site node as the reference, in one run. What
//! each figure is and how it is measured is printed under its table (see
//! [`print_report`]); the crate documentation has the overview.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::CommonArgs;
use crate::fio::{self, Job, JobStats, Timing};
use crate::load::{self, Load, OTHER_LOAD_FLAG, STEAL_FLAG};
use crate::machine::{self, Machine};
use crate::node_status::{Metrics, NodeStatus, Replication};
use crate::pair::{self, Pair, VolumeSpec};
use crate::procs;
use crate::sim::{self, LinkStatus};
use crate::stats::{median, median_of_present};
use crate::systems;
use crate::table::verdict;
use crate::table::{self, Format};

/// Options of `two-site`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Round-trip time of the simulated WAN between the sites (at least 10ms).
    #[arg(long, default_value = "20ms")]
    rtt: String,
    /// Bandwidth cap of the link for the catch-up measurement (a second
    /// catch-up figure is taken with the link unlimited).
    #[arg(long, default_value = "1Gbit")]
    bandwidth: String,
    /// Rounds of the owned-extent latency comparison (two-site A vs the
    /// single-site node, alternated).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Measured seconds per time-based fio job.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runtime: u32,
    /// Owned-extent steps of the claim-latency measurement (a pair of its
    /// own at 0 ms), comma-separated; `--claim-steps` alone skips it.
    #[arg(long, default_value = "0,16384,65536,131072", value_delimiter = ',', num_args = 0..)]
    claim_steps: Vec<u64>,
    /// Run only the claim-latency measurement and print its table.
    #[arg(long)]
    only_claims: bool,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Warm-up of the latency jobs (not counted).
const RAMP_S: u32 = 1;
/// Region for the owned-extent and pull latency jobs: 64 extents, well
/// under `max_owned_extents` (1024) × 1 MiB.
const LATENCY_REGION_TEXT: &str = "64 MiB";
const LATENCY_REGION: &str = "64m";
/// One 4 KiB write per fresh extent, this many extents.
const FIRST_WRITES: u64 = 256;
/// Fresh space for the sequential claim-rate workload.
const SEQ_REGION_TEXT: &str = "256 MiB";
const SEQ_REGION: &str = "256m";
/// Offset and size of the zipf claim-rate workload.
const ZIPF_OFFSET: &str = "512m";
const ZIPF_REGION_TEXT: &str = "512 MiB";
const ZIPF_REGION: &str = "512m";
const ZIPF: &str = "zipf:1.2";
/// Claim-rate workloads.
const SEQ_WORKLOAD: &str = "sequential 64 KiB writes, fresh 256 MiB";
const ZIPF_COLD: &str = "4 KiB random writes, zipf:1.2 over fresh 512 MiB";
const ZIPF_WARM: &str = "the same zipf job again at once (warm: extents still owned)";
/// Region of the amplification runs (pre-claimed).
const AMP_REGION_TEXT: &str = "128 MiB";
const AMP_REGION: &str = "128m";
/// The catch-up burst (pre-claimed), in MiB.
const BURST_MIB: u64 = 256;
/// The tracking-memory volume: every extent of it owned and fully dirty.
const TRACK_MIB: u64 = 1024;
/// How long the copy stream may take to drain after a phase.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Volumes of the pair, identical at both sites. `release_after` is raised
/// to 5 minutes where a phase needs its extents to stay owned (or peer-owned)
/// across the phase; the claim-rate volumes keep the default 30 s.
fn volumes() -> Vec<VolumeSpec> {
    let held = |name, predict| VolumeSpec { predict_extents: predict, release_after: "5m", ..VolumeSpec::default_named(name) };
    vec![
        held("own", 8),
        held("first", 0),
        held("pull", 8),
        VolumeSpec { predict_extents: 0, ..VolumeSpec::default_named("p0") },
        VolumeSpec { predict_extents: 8, ..VolumeSpec::default_named("p8") },
        VolumeSpec { predict_extents: 64, ..VolumeSpec::default_named("p64") },
        held("amp", 8),
        held("burst", 8),
        VolumeSpec {
            size_bytes: TRACK_MIB << 20,
            max_owned_extents: (TRACK_MIB << 20).div_ceil(pair::EXTENT_BYTES) as u32,
            ..held("track", 8)
        },
    ]
}

/// One fio run in the raw results.
#[derive(Serialize)]
struct RunRecord {
    phase: &'static str,
    system: String,
    round: u32,
    attempt: u32,
    used: bool,
    stats: JobStats,
    load: Load,
    /// Deltas of site A's /status for the volume over the run (two-site only).
    claim_round_trips: Option<u64>,
    writes: Option<u64>,
    pulls: Option<u64>,
    fio: Value,
}

/// Claim round trips of one volume and workload.
#[derive(Serialize, Clone)]
struct ClaimRate {
    workload: &'static str,
    volume: &'static str,
    predict_extents: u32,
    writes: u64,
    claim_round_trips: u64,
    per_1000_writes: f64,
    owned_extents_after: u64,
    seconds: f64,
}

/// Bytes of one amplification run.
#[derive(Serialize, Clone)]
struct Amplification {
    workload: &'static str,
    host_writes: u64,
    host_bytes: f64,
    copy_payload_bytes: f64,
    bulk_frame_bytes_volume: f64,
    bulk_frame_bytes_all: f64,
    wire_ab_bytes: f64,
    wire_ba_bytes: f64,
    drain_seconds: f64,
}

impl Amplification {
    fn ratio(&self, x: f64) -> Option<f64> {
        (self.host_bytes > 0.0).then(|| x / self.host_bytes)
    }
}

/// One catch-up measurement.
#[derive(Serialize, Clone)]
struct CatchUp {
    link: String,
    link_bits_per_second: Option<u64>,
    burst_bytes: u64,
    burst_seconds: f64,
    backlog_bytes: u64,
    claims_during_burst: u64,
    catch_up_seconds: f64,
    wire_ab_bytes: u64,
    payload_megabytes_per_second: f64,
    wire_megabytes_per_second: f64,
    /// CPUs used from the heal until caught up (A, B, simulator).
    load: Load,
}

/// Copy tracking memory with every owned extent fully dirty.
#[derive(Serialize, Clone)]
struct Tracking {
    owned_extents: u64,
    not_durable_bytes: u64,
    /// The node's own count of its tracking heap bytes (`tracking_bytes`).
    tracking_bytes: Option<u64>,
    resident_clean: u64,
    resident_dirty: u64,
    resident_drained: u64,
    drain_seconds: f64,
}

/// Everything `--json` saves.
#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    command: Vec<String>,
    machine: Machine,
    loadavg_at_end: String,
    tools: BTreeMap<&'static str, String>,
    rtt_ms: f64,
    link_settings: Option<sim::Settings>,
    rounds: u32,
    runtime_s: u32,
    ramp_s: u32,
    runs: Vec<RunRecord>,
    claim_rates: Vec<ClaimRate>,
    amplification: Vec<Amplification>,
    catch_up: Vec<CatchUp>,
    tracking: Tracking,
    claim_cost: Vec<crate::claim_cost::ClaimCost>,
    first_write_claims: Option<u64>,
    pull_owner_extents: Option<u64>,
    idle_link_bytes_per_second: Option<f64>,
    seconds_total: f64,
}

fn job(name: &str, rw: &'static str, bs: &'static str, iodepth: u32, size: &str, timing: Timing, extra: &[&str]) -> Job {
    Job {
        name: name.to_string(),
        rw,
        block_size: bs,
        iodepth,
        size: size.to_string(),
        timing,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

/// Writes `size` from offset 0 of `uri` once, 1 MiB sequential writes at QD8.
fn prefill(uri: &str, size: &str, work: &Path, label: &str) -> Result<JobStats> {
    let j = job(&format!("prefill-{label}"), "write", "1m", 8, size, Timing::Once, &[]);
    Ok(fio::run(&j, uri, work)?.stats)
}

/// Runs `job` on `uri`, measuring other load around it.
fn measured(job: &Job, uri: &str, work: &Path, pids: &[u32]) -> Result<(fio::Run, Load)> {
    let probe = load::Probe::start(pids);
    let run = fio::run(job, uri, work)?;
    let load = probe.finish();
    Ok((run, load))
}

fn delta(after: &Replication, before: &Replication) -> (u64, u64) {
    (after.claim_round_trips.saturating_sub(before.claim_round_trips), after.pulls.saturating_sub(before.pulls))
}

fn writes_of(status: &NodeStatus, volume: &str) -> Result<u64> {
    Ok(status.volume(volume)?.writes_total)
}

/// Runs the scenario and prints its report on stdout (progress on stderr).
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let common = &args.common;
    let rtt = sim::parse_duration(&args.rtt)?;
    if rtt < Duration::from_millis(10) {
        bail!("--rtt {} is below 10ms: the two-site figures are about WAN round trips", args.rtt);
    }
    let bandwidth = sim::parse_rate(&args.bandwidth)?;
    let machine = Machine::describe();
    if let Some(busy) = machine.cpu_busy_before.filter(|&b| b > 0.1) {
        eprintln!(
            "warning: the CPUs were {:.0} % busy just before the run: other work on this machine will skew the figures",
            busy * 100.0
        );
    }
    let geomirror_bin = common.geomirror_binary()?;
    let mut tools = procs::tool_versions(&["fio", "nbdinfo"])?;
    tools.insert("geomirror", procs::tool_version(&geomirror_bin.display().to_string(), "pass --geomirror PATH")?);
    tools.insert("geomirror build", procs::build_info(&geomirror_bin));

    let dir = common.temp_dir()?;
    let work = dir.path();
    eprintln!("working in {}{}", work.display(), if common.keep { " (kept)" } else { "" });
    if args.only_claims {
        let steps = crate::claim_cost::run(&geomirror_bin, work, &args.claim_steps)?;
        machine.print_header("two-site (claim latency only)", &machine::loadavg(), &tools, &std::env::args().collect::<Vec<_>>());
        println!();
        let mut checks = Vec::new();
        crate::claim_cost::print(&steps, &mut checks);
        crate::table::print_targets(&checks);
        return Ok(());
    }
    let vols = volumes();
    let mut pair = pair::start(&geomirror_bin, &work.join("pair"), &vols, rtt, None).context("start the two-site pair")?;
    let mut single = systems::start_geomirror(&geomirror_bin, work).context("start the single-site reference node")?;
    eprintln!(
        "pair ready: site A nbd {} admin {}, site B nbd {} admin {}, sim {} (control {}); single-site reference at {}",
        pair.a.nbd, pair.a.admin, pair.b.nbd, pair.b.admin, pair.sim.listen, pair.sim.control, single.uri
    );
    let link_settings = pair.sim.status().ok().map(|s| s.settings);
    let mut pids = pair.pids();
    pids.push(single.server.pid());
    let per_job = f64::from(args.runtime + RAMP_S) + 0.5;
    eprintln!(
        "estimate: latency rounds ~{:.0} s, first writes ~{:.0} s, pulls ~{:.0} s, claim rates ~{:.0} s, amplification ~{:.0} s, catch-up ~20 s",
        f64::from(args.rounds) * 2.0 * per_job,
        FIRST_WRITES as f64 * (rtt.as_secs_f64() + 0.003),
        per_job + 2.0,
        3.0 * (f64::from(args.runtime) + 256.0 * (rtt.as_secs_f64() + 0.003) / 4.0 + 2.0),
        2.0 * f64::from(args.runtime) + 4.0,
    );

    let mut runs = Vec::new();

    // 1. Owned-extent write latency against the single-site node.
    owned_latency(args, &mut pair, &mut single, &pids, work, &mut runs)?;
    // 2. First write in a clean extent.
    let first_write_claims = first_writes(&mut pair, &pids, work, &mut runs)?;
    // 3. Reads of peer-owned blocks.
    let pull_owner_extents = pulls(args, &mut pair, &pids, work, &mut runs)?;
    // 4. Claim round trips per 1000 writes.
    let claim_rates = claim_rates(args, &mut pair, work)?;
    // 5. Copy amplification.
    let idle_link_bytes_per_second = idle_link_rate(&pair).ok();
    let amplification = amplification(args, &mut pair, work)?;
    // 6. Catch-up after a burst.
    let catch_up = catch_up(&args.bandwidth, bandwidth, &mut pair, work)?;
    // 7. Tracking memory with every owned extent dirty.
    let tracking = tracking(&mut pair, work)?;
    pair.check_alive()?;
    drop(pair);
    drop(single);
    // 8. Claim latency by owned extents (a pair of its own).
    let claim_cost = crate::claim_cost::run(&geomirror_bin, work, &args.claim_steps)?;

    let report = Report {
        benchmark: "two-site",
        command: std::env::args().collect(),
        machine,
        loadavg_at_end: machine::loadavg(),
        tools,
        rtt_ms: rtt.as_secs_f64() * 1e3,
        link_settings,
        rounds: args.rounds,
        runtime_s: args.runtime,
        ramp_s: RAMP_S,
        runs,
        claim_rates,
        amplification,
        catch_up,
        tracking,
        claim_cost,
        first_write_claims,
        pull_owner_extents,
        idle_link_bytes_per_second,
        seconds_total: started.elapsed().as_secs_f64(),
    };
    print_report(&report);
    common.save_json(&report)
}

/// The systems of the owned-extent latency comparison.
const OWNED_SYSTEMS: [&str; 3] = ["two-site A", "single-site", "two-site A, link held"];

/// Phase 1: 4 KiB randwrite QD1 in a region site A owns vs the same job on
/// the single-site node, alternated (order rotated every round), with a
/// round disturbed by outside load repeated up to `--retries` times. A third
/// run per round repeats site A's job with the link held (hold partition:
/// the copy stream cannot send, B and the simulator idle): the difference
/// to the normal site-A run is what replicating costs the writer's latency
/// on this 2-CPU machine, where site B and the simulator share the CPUs.
fn owned_latency(
    args: &Args,
    pair: &mut Pair,
    single: &mut systems::Target,
    pids: &[u32],
    work: &Path,
    runs: &mut Vec<RunRecord>,
) -> Result<()> {
    let a_uri = pair.a.uri("own");
    let s = prefill(&a_uri, LATENCY_REGION, work, "own-a")?;
    eprintln!("owned latency: site A wrote {LATENCY_REGION_TEXT} of `own` ({:.0} MB/s, claims included)", s.write.bw_bytes / 1e6);
    prefill(&single.uri, LATENCY_REGION, work, "single")?;
    let took = pair.a.wait_durable("own", DRAIN_TIMEOUT)?;
    let owned = pair.a.status()?.replication("own")?.owned_extents;
    eprintln!("  durable at B after {:.2} s; site A owns {owned} extents of `own`", took.as_secs_f64());
    let j = job(
        "owned-randwrite-4k-qd1",
        "randwrite",
        "4k",
        1,
        LATENCY_REGION,
        Timing::TimeBased { runtime_s: args.runtime, ramp_s: RAMP_S },
        &[],
    );
    for round in 1..=args.rounds {
        for attempt in 0..=args.common.retries {
            let mut round_runs = Vec::new();
            for k in 0..OWNED_SYSTEMS.len() {
                let system = OWNED_SYSTEMS[(k + round as usize - 1) % OWNED_SYSTEMS.len()];
                let record = if system == "single-site" {
                    single.server.check_alive()?;
                    let (run, load) = measured(&j, &single.uri, work, pids)?;
                    RunRecord {
                        phase: "owned-latency",
                        system: system.into(),
                        round,
                        attempt,
                        used: true,
                        stats: run.stats,
                        load,
                        claim_round_trips: None,
                        writes: None,
                        pulls: None,
                        fio: run.raw,
                    }
                } else {
                    pair.check_alive()?;
                    let held = system.ends_with("held");
                    let before = pair.a.status()?;
                    if held {
                        pair.sim.partition_hold()?;
                    }
                    let result = measured(&j, &a_uri, work, pids);
                    if held {
                        pair.sim.heal()?;
                    }
                    let (run, load) = result?;
                    let after = pair.a.status()?;
                    let (claims, _) = delta(&after.replication("own")?, &before.replication("own")?);
                    let writes = writes_of(&after, "own")? - writes_of(&before, "own")?;
                    // Let the copy stream finish before the next run.
                    pair.a.wait_durable("own", DRAIN_TIMEOUT)?;
                    RunRecord {
                        phase: "owned-latency",
                        system: system.into(),
                        round,
                        attempt,
                        used: true,
                        stats: run.stats,
                        load,
                        claim_round_trips: Some(claims),
                        writes: Some(writes),
                        pulls: None,
                        fio: run.raw,
                    }
                };
                eprintln!(
                    "  round {round}/{} {:<21} IOPS {:.0}, clat p50 {} µs, lat p50 {} µs, p99 {} µs{}, servers CPU {}, other load {}, steal {}",
                    args.rounds,
                    record.system,
                    record.stats.write.iops,
                    table::cell(record.stats.write.clat_p50_us, Format::OneDecimal),
                    table::cell(record.stats.write.lat_p50_us, Format::OneDecimal),
                    table::cell(record.stats.write.lat_p99_us, Format::OneDecimal),
                    record.claim_round_trips.map_or(String::new(), |c| format!(", claims {c}")),
                    cpu_split(&record.load),
                    record.load.other_cpus.map_or_else(|| "n/a".into(), |c| format!("{c:.2} CPUs")),
                    record.load.steal_cpus.map_or_else(|| "n/a".into(), |c| format!("{c:.2} CPUs")),
                );
                round_runs.push(record);
            }
            let retry = round_runs.iter().any(|r| r.load.disturbed()) && attempt < args.common.retries;
            if retry {
                eprintln!(
                    "  other load above {OTHER_LOAD_FLAG} CPUs or steal above {STEAL_FLAG} CPUs during this round: discarding it and repeating"
                );
                round_runs.iter_mut().for_each(|r| r.used = false);
            }
            runs.extend(round_runs);
            if !retry {
                break;
            }
        }
    }
    Ok(())
}

/// "A 0.61 / B 0.20 / sim 0.15 / single 0.00" CPUs over a run.
/// CPU µs per host write of the processes `which` (indexes into the run's
/// processes: site A, site B, the simulator, the single-site node).
fn per_write(x: &RunRecord, which: &[usize]) -> Option<f64> {
    let cpus: f64 = which.iter().filter_map(|&i| x.load.cpus_per_process.get(i)).sum();
    (x.stats.write.iops > 0.0).then(|| cpus / x.stats.write.iops * 1e6)
}

/// Context switches per host write of the processes `which` (as
/// [`per_write`]; live threads only), writes estimated as IOPS × wall time.
fn switches_per_write(x: &RunRecord, which: &[usize]) -> Option<f64> {
    let switches: u64 = which.iter().filter_map(|&i| x.load.switches_per_process.get(i)).sum();
    // Over the run's whole wall time (ramp included), as the CPU figures.
    let writes = x.stats.write.iops * x.load.wall_seconds;
    (writes > 0.0).then(|| switches as f64 / writes)
}

fn cpu_split(load: &Load) -> String {
    let names = ["A", "B", "sim", "single"];
    load.cpus_per_process.iter().zip(names).map(|(c, n)| format!("{n} {c:.2}")).collect::<Vec<_>>().join(" / ")
}

/// Phase 2: on `first` (predict_extents = 0), one 4 KiB write at the start
/// of each of [`FIRST_WRITES`] fresh extents (`--rw=write:1020k`: a 4 KiB
/// write, then a 1020 KiB hole). Returns the claim round trips counted.
fn first_writes(pair: &mut Pair, pids: &[u32], work: &Path, runs: &mut Vec<RunRecord>) -> Result<Option<u64>> {
    let j = job("first-write-4k", "write:1020k", "4k", 1, &format!("{FIRST_WRITES}m"), Timing::Once, &[]);
    let before = pair.a.status()?;
    let (run, load) = measured(&j, &pair.a.uri("first"), work, pids)?;
    let after = pair.a.status()?;
    let (claims, _) = delta(&after.replication("first")?, &before.replication("first")?);
    let writes = writes_of(&after, "first")? - writes_of(&before, "first")?;
    eprintln!(
        "first writes: {writes} writes, {claims} claim round trips, lat p50 {} µs p99 {} µs",
        table::cell(run.stats.write.lat_p50_us, Format::OneDecimal),
        table::cell(run.stats.write.lat_p99_us, Format::OneDecimal)
    );
    runs.push(RunRecord {
        phase: "first-write",
        system: "two-site A".into(),
        round: 1,
        attempt: 0,
        used: true,
        stats: run.stats,
        load,
        claim_round_trips: Some(claims),
        writes: Some(writes),
        pulls: None,
        fio: run.raw,
    });
    Ok(Some(claims))
}

/// Phase 3: site B writes [`LATENCY_REGION`] of `pull` (B then owns it),
/// then site A reads it with 4 KiB randread QD1. Returns how many extents A
/// saw as peer-owned.
fn pulls(args: &Args, pair: &mut Pair, pids: &[u32], work: &Path, runs: &mut Vec<RunRecord>) -> Result<Option<u64>> {
    prefill(&pair.b.uri("pull"), LATENCY_REGION, work, "pull-b")?;
    pair.b.wait_durable("pull", DRAIN_TIMEOUT)?;
    let peer_owned = pair.a.status()?.replication("pull")?.peer_owned_extents;
    eprintln!("pulls: site B wrote {LATENCY_REGION_TEXT} of `pull`; site A sees {peer_owned} peer-owned extents");
    let j = job(
        "pull-randread-4k-qd1",
        "randread",
        "4k",
        1,
        LATENCY_REGION,
        Timing::TimeBased { runtime_s: args.runtime, ramp_s: RAMP_S },
        &[],
    );
    let before = pair.a.status()?;
    let (run, load) = measured(&j, &pair.a.uri("pull"), work, pids)?;
    let after = pair.a.status()?;
    let (_, pulled) = delta(&after.replication("pull")?, &before.replication("pull")?);
    eprintln!(
        "  {} reads ({} pulls incl. ramp), lat p50 {} µs p99 {} µs",
        run.stats.read.total_ios,
        pulled,
        table::cell(run.stats.read.lat_p50_us, Format::OneDecimal),
        table::cell(run.stats.read.lat_p99_us, Format::OneDecimal)
    );
    runs.push(RunRecord {
        phase: "pull",
        system: "two-site A".into(),
        round: 1,
        attempt: 0,
        used: true,
        stats: run.stats,
        load,
        claim_round_trips: None,
        writes: None,
        pulls: Some(pulled),
        fio: run.raw,
    });
    Ok(Some(peer_owned))
}

/// Phase 4: claim round trips per 1000 host writes for a sequential and a
/// zipf workload on volumes with predict_extents 0, 8 and 64.
fn claim_rates(args: &Args, pair: &mut Pair, work: &Path) -> Result<Vec<ClaimRate>> {
    let mut out = Vec::new();
    for (volume, predict) in [("p0", 0), ("p8", 8), ("p64", 64)] {
        let zipf = job(
            &format!("zipf-4k-{volume}"),
            "randwrite",
            "4k",
            1,
            ZIPF_REGION,
            Timing::TimeBased { runtime_s: args.runtime, ramp_s: 0 },
            &[&format!("--offset={ZIPF_OFFSET}"), &format!("--random_distribution={ZIPF}")],
        );
        let workloads = [
            (SEQ_WORKLOAD, job(&format!("seq-64k-{volume}"), "write", "64k", 1, SEQ_REGION, Timing::Once, &[])),
            (ZIPF_COLD, zipf.clone()),
            (ZIPF_WARM, zipf),
        ];
        for (workload, j) in workloads {
            pair.check_alive()?;
            let before = pair.a.status()?;
            let t = Instant::now();
            fio::run(&j, &pair.a.uri(volume), work)?;
            let seconds = t.elapsed().as_secs_f64();
            let after = pair.a.status()?;
            let (claims, _) = delta(&after.replication(volume)?, &before.replication(volume)?);
            let writes = writes_of(&after, volume)? - writes_of(&before, volume)?;
            let per_1000_writes = if writes > 0 { claims as f64 * 1000.0 / writes as f64 } else { f64::NAN };
            let owned_extents_after = after.replication(volume)?.owned_extents;
            eprintln!(
                "claims: {volume} {workload}: {writes} writes, {claims} round trips ({per_1000_writes:.2} per 1000), {owned_extents_after} extents owned, {seconds:.1} s"
            );
            out.push(ClaimRate {
                workload,
                volume,
                predict_extents: predict,
                writes,
                claim_round_trips: claims,
                per_1000_writes,
                owned_extents_after,
                seconds,
            });
        }
    }
    Ok(out)
}

/// Bytes per second crossing the link A → B while nothing is written
/// (heartbeats, releases), over 2 s.
fn idle_link_rate(pair: &Pair) -> Result<f64> {
    let before = pair.sim.status()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let after = pair.sim.status()?;
    Ok((after.counters.ab.delivered_bytes.saturating_sub(before.counters.ab.delivered_bytes)) as f64 / t.elapsed().as_secs_f64())
}

/// What one amplification snapshot reads.
struct Snapshot {
    link: LinkStatus,
    metrics: Metrics,
    writes: u64,
}

fn snapshot(pair: &Pair, volume: &str) -> Result<Snapshot> {
    Ok(Snapshot { link: pair.sim.status()?, metrics: pair.a.metrics()?, writes: writes_of(&pair.a.status()?, volume)? })
}

/// Phase 5: bytes on the link A → B per byte written by hosts, for 4 KiB
/// random writes (uniform: each block at most once, fio's random map; and
/// zipf:1.2: hot blocks rewritten) into pre-claimed extents, counted once
/// everything is durable at B.
fn amplification(args: &Args, pair: &mut Pair, work: &Path) -> Result<Vec<Amplification>> {
    let uri = pair.a.uri("amp");
    prefill(&uri, AMP_REGION, work, "amp")?;
    pair.a.wait_durable("amp", DRAIN_TIMEOUT)?;
    let mut out = Vec::new();
    let zipf = format!("--random_distribution={ZIPF}");
    let variants: [(&'static str, Vec<&str>); 2] =
        [("4 KiB random writes, uniform over 128 MiB", vec![]), ("4 KiB random writes, zipf:1.2 over 128 MiB", vec![zipf.as_str()])];
    for (workload, extra) in variants {
        pair.check_alive()?;
        let j = job("amp-randwrite-4k", "randwrite", "4k", 1, AMP_REGION, Timing::TimeBased { runtime_s: args.runtime, ramp_s: 0 }, &extra);
        let before = snapshot(pair, "amp")?;
        fio::run(&j, &uri, work)?;
        let drain = pair.a.wait_durable("amp", DRAIN_TIMEOUT)?;
        // Progress reports from B may still be on their way; give the
        // link a moment so the counters include every frame of the run.
        std::thread::sleep(Duration::from_millis(200) + Duration::from_micros(pair.sim.status()?.settings.delay_ab_us));
        let after = snapshot(pair, "amp")?;
        let m = |s: &Snapshot, name: &str, labels: &[(&str, &str)]| s.metrics.get(name, labels);
        let d = |name: &str, labels: &[(&str, &str)]| m(&after, name, labels) - m(&before, name, labels);
        let a = Amplification {
            workload,
            host_writes: after.writes - before.writes,
            host_bytes: d("geomirror_host_write_bytes_total", &[("volume", "amp")]),
            copy_payload_bytes: d("geomirror_copy_sent_bytes_total", &[("volume", "amp")]),
            bulk_frame_bytes_volume: d("geomirror_peer_sent_bytes_total", &[("volume", "amp"), ("lane", "bulk")]),
            bulk_frame_bytes_all: d("geomirror_peer_sent_bytes_total", &[("lane", "bulk")]),
            wire_ab_bytes: after.link.counters.ab.delivered_bytes.saturating_sub(before.link.counters.ab.delivered_bytes) as f64,
            wire_ba_bytes: after.link.counters.ba.delivered_bytes.saturating_sub(before.link.counters.ba.delivered_bytes) as f64,
            drain_seconds: drain.as_secs_f64(),
        };
        eprintln!(
            "amplification: {workload}: {} writes, host {:.1} MB, copy payload {:.1} MB, bulk frames {:.1} MB, wire A→B {:.1} MB ({:.3} per host byte)",
            a.host_writes,
            a.host_bytes / 1e6,
            a.copy_payload_bytes / 1e6,
            a.bulk_frame_bytes_volume / 1e6,
            a.wire_ab_bytes / 1e6,
            a.ratio(a.wire_ab_bytes).unwrap_or(f64::NAN)
        );
        out.push(a);
    }
    Ok(out)
}

/// Phase 6: pre-claim [`BURST_MIB`] of `burst`, hold-partition the link,
/// rewrite it at A, heal, and time until A's not-durable bytes reach 0; once
/// with the link capped at `bandwidth`, once unlimited.
fn catch_up(bandwidth_text: &str, bandwidth: Option<u64>, pair: &mut Pair, work: &Path) -> Result<Vec<CatchUp>> {
    let uri = pair.a.uri("burst");
    let region = format!("{BURST_MIB}m");
    prefill(&uri, &region, work, "burst-claim")?;
    pair.a.wait_durable("burst", DRAIN_TIMEOUT)?;
    let mut links = vec![(bandwidth_text.to_string(), bandwidth)];
    if bandwidth.is_some() {
        links.push(("unlimited".to_string(), None));
    }
    let mut out = Vec::new();
    for (label, bps) in links {
        pair.check_alive()?;
        pair.sim.set_bandwidth(bps)?;
        let before = pair.a.status()?.replication("burst")?;
        pair.sim.partition_hold()?;
        let t = Instant::now();
        let burst = prefill(&uri, &region, work, "burst");
        let burst_seconds = t.elapsed().as_secs_f64();
        let backlog = pair.a.status().and_then(|s| s.replication("burst"));
        let link_before = pair.sim.status();
        // Heal first, whatever happened: a held link would stall the rest.
        let probe = load::Probe::start(&pair.pids());
        let healed_at = Instant::now();
        pair.sim.heal()?;
        burst?;
        let backlog = backlog?;
        let link_before = link_before?;
        pair.a.wait_durable("burst", DRAIN_TIMEOUT)?;
        let catch_up_seconds = healed_at.elapsed().as_secs_f64();
        let load = probe.finish();
        let link_after = pair.sim.status()?;
        let wire = link_after.counters.ab.delivered_bytes.saturating_sub(link_before.counters.ab.delivered_bytes);
        let c = CatchUp {
            link: label,
            link_bits_per_second: bps,
            burst_bytes: BURST_MIB << 20,
            burst_seconds,
            backlog_bytes: backlog.not_durable_at_peer_bytes,
            claims_during_burst: backlog.claim_round_trips.saturating_sub(before.claim_round_trips),
            catch_up_seconds,
            wire_ab_bytes: wire,
            payload_megabytes_per_second: backlog.not_durable_at_peer_bytes as f64 / catch_up_seconds / 1e6,
            wire_megabytes_per_second: wire as f64 / catch_up_seconds / 1e6,
            load,
        };
        eprintln!(
            "catch-up ({}): burst {:.2} s, backlog {:.1} MiB, caught up in {:.2} s: {:.0} MB/s payload, {:.0} MB/s on the wire; CPUs {}",
            c.link,
            c.burst_seconds,
            c.backlog_bytes as f64 / (1 << 20) as f64,
            c.catch_up_seconds,
            c.payload_megabytes_per_second,
            c.wire_megabytes_per_second,
            cpu_split(&c.load)
        );
        out.push(c);
    }
    pair.sim.set_bandwidth(None)?;
    Ok(out)
}

/// Phase 7: site A writes all of `track` (every extent owned, up to its
/// `max_owned_extents`) and lets it drain; then, with the link held, writes
/// it all again, so every owned extent is fully dirty, and reads its RSS and
/// `tracking_bytes`; then heals and lets it drain.
fn tracking(pair: &mut Pair, work: &Path) -> Result<Tracking> {
    let uri = pair.a.uri("track");
    let region = format!("{TRACK_MIB}m");
    let pid = pair.a.server.pid();
    prefill(&uri, &region, work, "track-claim")?;
    pair.a.wait_durable("track", DRAIN_TIMEOUT)?;
    let resident_clean = procs::resident_bytes(pid)?;
    pair.sim.partition_hold()?;
    let burst = prefill(&uri, &region, work, "track");
    let dirty = pair.a.status().and_then(|s| s.replication("track"));
    let resident_dirty = procs::resident_bytes(pid);
    // Heal first, whatever happened: a held link would stall the rest.
    pair.sim.heal()?;
    burst?;
    let (dirty, resident_dirty) = (dirty?, resident_dirty?);
    let drain = pair.a.wait_durable("track", DRAIN_TIMEOUT)?;
    let t = Tracking {
        owned_extents: dirty.owned_extents,
        not_durable_bytes: dirty.not_durable_at_peer_bytes,
        tracking_bytes: dirty.tracking_bytes,
        resident_clean,
        resident_dirty,
        resident_drained: procs::resident_bytes(pid)?,
        drain_seconds: drain.as_secs_f64(),
    };
    eprintln!(
        "tracking: {} extents owned, {:.0} MiB not durable at B, tracking {} bytes, RSS {:.1} → {:.1} → {:.1} MiB",
        t.owned_extents,
        t.not_durable_bytes as f64 / (1 << 20) as f64,
        t.tracking_bytes.map_or_else(|| "n/a".into(), |b| b.to_string()),
        t.resident_clean as f64 / (1 << 20) as f64,
        t.resident_dirty as f64 / (1 << 20) as f64,
        t.resident_drained as f64 / (1 << 20) as f64,
    );
    Ok(t)
}

// ---------------------------------------------------------------- report

fn used<'a>(runs: &'a [RunRecord], phase: &str, system: &str) -> Vec<&'a RunRecord> {
    runs.iter().filter(|r| r.used && r.phase == phase && r.system == system).collect()
}

fn med(runs: &[&RunRecord], f: impl Fn(&RunRecord) -> Option<f64>) -> Option<f64> {
    median_of_present(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
}

fn ms(us: Option<f64>) -> String {
    us.map_or_else(|| "n/a".into(), |v| format!("{:.2}", v / 1000.0))
}

/// Prints every table, the PASS/MISS lines and a note under each table.
fn print_report(r: &Report) {
    let m = &r.machine;
    m.print_header("two-site", &r.loadavg_at_end, &r.tools, &r.command);
    if let Some(s) = &r.link_settings {
        println!(
            "- link: `geomirror sim` between site A (dials) and site B, {:.1} ms + {:.1} ms one way (RTT {:.1} ms), bandwidth unlimited except in the catch-up phase; all on 127.0.0.1",
            s.delay_ab_us as f64 / 1e3,
            s.delay_ba_us as f64 / 1e3,
            r.rtt_ms
        );
    }
    println!("- total time: {:.0} s\n", r.seconds_total);
    let mut checks: Vec<String> = Vec::new();

    // Table 1.
    println!("## Owned-extent write latency (site A vs a single-site node)\n");
    let two = used(&r.runs, "owned-latency", OWNED_SYSTEMS[0]);
    let one = used(&r.runs, "owned-latency", OWNED_SYSTEMS[1]);
    let held = used(&r.runs, "owned-latency", OWNED_SYSTEMS[2]);
    type Pick = fn(&RunRecord) -> Option<f64>;
    let figures: [(&str, Pick, Format); 13] = [
        ("4 KiB randwrite QD1, IOPS", |x| Some(x.stats.write.iops), Format::Integer),
        ("clat p50 µs", |x| x.stats.write.clat_p50_us, Format::OneDecimal),
        ("clat p99 µs", |x| x.stats.write.clat_p99_us, Format::OneDecimal),
        ("total lat p50 µs (slat+clat)", |x| x.stats.write.lat_p50_us, Format::OneDecimal),
        ("total lat p99 µs", |x| x.stats.write.lat_p99_us, Format::OneDecimal),
        ("CPUs used by site A's node", |x| x.load.cpus_per_process.first().copied(), Format::TwoDecimals),
        ("CPUs used by site B's node", |x| x.load.cpus_per_process.get(1).copied(), Format::TwoDecimals),
        ("CPUs used by the simulator", |x| x.load.cpus_per_process.get(2).copied(), Format::TwoDecimals),
        ("CPUs used by the single-site node", |x| x.load.cpus_per_process.get(3).copied(), Format::TwoDecimals),
        (
            "CPU µs per write, the writing site's node",
            |x| per_write(x, if x.system == OWNED_SYSTEMS[1] { &[3] } else { &[0] }),
            Format::OneDecimal,
        ),
        (
            "CPU µs per write, the whole system",
            |x| per_write(x, if x.system == OWNED_SYSTEMS[1] { &[3] } else { &[0, 1, 2] }),
            Format::OneDecimal,
        ),
        (
            "context switches per write, the writing site's node",
            |x| switches_per_write(x, if x.system == OWNED_SYSTEMS[1] { &[3] } else { &[0] }),
            Format::OneDecimal,
        ),
        (
            "context switches per write, the whole system",
            |x| switches_per_write(x, if x.system == OWNED_SYSTEMS[1] { &[3] } else { &[0, 1, 2] }),
            Format::OneDecimal,
        ),
    ];
    let mut rows = Vec::new();
    let mut clat_ratio = None;
    for (label, pick, format) in figures {
        let (a, b, h) = (med(&two, pick), med(&one, pick), med(&held, pick));
        let ratio = |x: Option<f64>| x.zip(b).and_then(|(x, b)| (b != 0.0).then(|| x / b));
        // Pinned, fio and site A share a CPU: a request is often served
        // inside fio's submit call, so the check uses total latency.
        let checked = if crate::procs::is_pinned() { "total lat p50 µs (slat+clat)" } else { "clat p50 µs" };
        if label == checked {
            clat_ratio = ratio(a);
        }
        let is_cpu = label.starts_with("CPUs");
        let r2 = |x: Option<f64>| if is_cpu { "".to_string() } else { ratio(x).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")) };
        let per_round = |rs: &[&RunRecord]| rs.iter().map(|x| table::cell(pick(x), format)).collect::<Vec<_>>().join(" / ");
        rows.push(vec![
            label.to_string(),
            table::cell(a, format),
            table::cell(b, format),
            table::cell(h, format),
            r2(a),
            r2(h),
            format!("{} ‖ {} ‖ {}", per_round(&two), per_round(&one), per_round(&held)),
        ]);
    }
    print!(
        "{}",
        table::plain_markdown(
            &[
                "figure",
                "two-site A",
                "single-site",
                "two-site A, link held",
                "ratio A/single",
                "ratio A held/single",
                "rounds (A ‖ single ‖ A held)"
            ],
            &rows
        )
    );
    let claims: u64 = two.iter().chain(&held).filter_map(|x| x.claim_round_trips).sum();
    let writes: u64 = two.iter().chain(&held).filter_map(|x| x.writes).sum();
    let all: Vec<&&RunRecord> = two.iter().chain(&one).chain(&held).collect();
    let other: Vec<f64> = all.iter().filter_map(|x| x.load.other_cpus).collect();
    let steal: Vec<f64> = all.iter().filter_map(|x| x.load.steal_cpus).collect();
    let discarded = r.runs.iter().filter(|x| x.phase == "owned-latency" && !x.used).count();
    println!(
        "\nHow: volume `own` (1 MiB extents, release_after 5m); site A first wrote its first {LATENCY_REGION_TEXT} once (64 extents, claimed), \
         and the single-site node's `vol0` got the same prefill. Then fio's nbd engine ran 4 KiB random writes at QD1 over those 64 MiB for \
         {} s after a {RAMP_S} s ramp, on site A, on the single-site node, and on site A again with the link held (a hold partition: the \
         copy stream cannot deliver, so site B and the simulator stay idle — what site A costs without the replication work competing for \
         the 2 CPUs), {} round(s) with the order rotated each round; after each site-A run the copy stream was let drain before the next run. \
         Medians over rounds. During the site-A runs {claims} of {writes} host writes waited for a claim round trip (expected 0: owned \
         extents). CPUs used: CPU time of each process over the run ÷ wall time (/proc). Other load (CPU of user-space processes other than \
         both nodes, the simulator, the single-site node and the benchmark with its fio): median {} CPUs, max {} CPUs; hypervisor steal: \
         median {} CPUs (QD1 latency follows steal on this VM); a round with any run above {OTHER_LOAD_FLAG} CPUs of other load or \
         {STEAL_FLAG} CPUs of steal was discarded and repeated (at most --retries times, then kept): {discarded} run(s) discarded.\n",
        r.runtime_s,
        r.rounds,
        median(&other).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
        other.iter().copied().reduce(f64::max).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
        median(&steal).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
    );
    let kind = if crate::procs::is_pinned() { "total lat" } else { "clat" };
    checks.push(match clat_ratio {
        Some(x) => format!("{} owned-extent write {kind} p50, two-site A / single-site: {x:.2} (target ≤ 1.2)", verdict(x <= 1.2)),
        None => format!("MISS owned-extent write {kind} p50: not measured (target ≤ 1.2)"),
    });

    // Table 2.
    println!("## Round-trip paths at site A\n");
    let rtt_ms = r.rtt_ms;
    let mut rows = Vec::new();
    for (phase, label, read) in [
        ("first-write", "first 4 KiB write in a clean extent (predict_extents 0)", false),
        ("pull", "4 KiB read of a peer-owned block (pull), QD1", true),
    ] {
        if let Some(x) = used(&r.runs, phase, "two-site A").first() {
            let d = if read { &x.stats.read } else { &x.stats.write };
            rows.push(vec![
                label.to_string(),
                d.total_ios.to_string(),
                ms(d.lat_p50_us),
                ms(d.lat_p99_us),
                ms(d.clat_p50_us),
                format!("{:.1}", rtt_ms),
                d.lat_p50_us.map_or_else(|| "n/a".into(), |p| format!("{:+.2}", p / 1000.0 - rtt_ms)),
            ]);
        }
    }
    print!(
        "{}",
        table::plain_markdown(
            &["path", "requests", "total lat p50 ms", "total lat p99 ms", "clat p50 ms", "link RTT ms", "p50 − RTT ms"],
            &rows
        )
    );
    let first = used(&r.runs, "first-write", "two-site A");
    let first_claims = first.first().and_then(|x| x.claim_round_trips).unwrap_or(0);
    let pulls = used(&r.runs, "pull", "two-site A").first().and_then(|x| x.pulls).unwrap_or(0);
    println!(
        "\nHow: first write: fio `--rw=write:1020k --bs=4k` at QD1 over {FIRST_WRITES} MiB of volume `first` (predict_extents 0), i.e. one write at \
         the start of each of {FIRST_WRITES} fresh 1 MiB extents; {first_claims} of them waited for a claim round trip (the claim must be durable \
         in site B's record before B grants it, so ≈ 1 RTT + B's record fsync is expected). Pull: site B wrote the first {LATENCY_REGION_TEXT} of volume \
         `pull` (B owns those extents, release_after 5m; site A saw {} of them as peer-owned), then site A ran 4 KiB random reads at QD1 over them \
         for {} s after a {RAMP_S} s ramp ({pulls} pulls counted at A, ramp included); each read is pulled from B: ≈ 1 RTT expected. \
         `p50 − RTT` is the cost beyond the configured round trip (the simulator itself adds ~0.1–0.3 ms, see sim/USAGE.md).\n",
        r.pull_owner_extents.unwrap_or(0),
        r.runtime_s
    );

    // Table 3.
    println!("## Claim round trips per 1000 host writes\n");
    let mut rows = Vec::new();
    for workload in [SEQ_WORKLOAD, ZIPF_COLD, ZIPF_WARM] {
        let mut row = vec![workload.to_string()];
        for v in ["p0", "p8", "p64"] {
            row.push(r.claim_rates.iter().find(|c| c.workload == workload && c.volume == v).map_or_else(
                || "n/a".into(),
                |c| format!("{:.2} ({} / {}; {} owned)", c.per_1000_writes, c.claim_round_trips, c.writes, c.owned_extents_after),
            ));
        }
        rows.push(row);
    }
    print!("{}", table::plain_markdown(&["workload (QD1)", "predict_extents 0", "predict_extents 8", "predict_extents 64"], &rows));
    println!(
        "\nHow: three volumes identical but for predict_extents (0, 8, 64; 1 MiB extents, max_owned_extents 1024, release_after 30s). \
         Sequential: fio 64 KiB writes at QD1 once over the first {SEQ_REGION_TEXT} (fresh). Zipf: fio 4 KiB random writes at QD1 with \
         random_distribution={ZIPF} over {ZIPF_REGION_TEXT} from offset 512 MiB (fresh), {} s, then the same job once more straight away \
         (the extents it touched are still owned: the steady-state rate). Each cell: claim_round_trips delta ÷ \
         writes_total delta of site A's /status × 1000 (in brackets: round trips / host writes; extents owned afterwards, the exposure prediction costs). \
         claim_round_trips counts host writes that waited for a claim or handover round trip.\n",
        r.runtime_s
    );
    for c in r.claim_rates.iter().filter(|c| c.workload.starts_with("sequential") && c.predict_extents > 0) {
        checks.push(format!(
            "{} sequential writes, predict_extents {}: {:.2} claim round trips per 1000 writes (target ≤ 5)",
            verdict(c.per_1000_writes <= 5.0),
            c.predict_extents,
            c.per_1000_writes
        ));
    }

    // Table 4.
    println!("## Copy amplification (bytes on the link A → B per byte written)\n");
    let mut rows = Vec::new();
    for a in &r.amplification {
        let f = |x: Option<f64>| x.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"));
        let per_write = |x: f64| if a.host_writes > 0 { format!("{:.1}", x / a.host_writes as f64) } else { "n/a".into() };
        rows.push(vec![
            a.workload.to_string(),
            a.host_writes.to_string(),
            format!("{:.2}", a.host_bytes / 1e6),
            format!("{:.2}", a.copy_payload_bytes / 1e6),
            format!("{:.2}", a.wire_ab_bytes / 1e6),
            f(a.ratio(a.wire_ab_bytes)),
            f(a.ratio(a.copy_payload_bytes)),
            f((a.copy_payload_bytes > 0.0).then(|| a.wire_ab_bytes / a.copy_payload_bytes - 1.0)),
            per_write(a.wire_ab_bytes - a.copy_payload_bytes),
            f((a.copy_payload_bytes > 0.0).then(|| a.bulk_frame_bytes_volume / a.copy_payload_bytes - 1.0)),
            format!("{:.2}", a.wire_ba_bytes / 1e6),
        ]);
    }
    print!(
        "{}",
        table::plain_markdown(
            &[
                "workload (QD1, pre-claimed extents)",
                "host writes",
                "host MB",
                "copy payload MB",
                "link A→B MB",
                "link ÷ host",
                "payload ÷ host (write-combining)",
                "link ÷ payload − 1 (framing + TLS + everything else on the link)",
                "link − payload, bytes per host write",
                "node's bulk-frame estimate ÷ payload − 1",
                "link B→A MB",
            ],
            &rows
        )
    );
    println!(
        "\nHow: volume `amp`: site A first wrote its first {AMP_REGION_TEXT} (claimed, then let drain). Then fio 4 KiB random writes at QD1 for {} s \
         over those {AMP_REGION_TEXT} — uniform (fio's random map: each block at most once per pass, so nothing to combine) and zipf:1.2 (hot \
         blocks rewritten) — and the counters were read once site A's not_durable_at_peer_bytes was 0 again. Host MB: \
         geomirror_host_write_bytes_total; copy payload: geomirror_copy_sent_bytes_total (block bytes sent once however often rewritten, so \
         payload ÷ host < 1 is the write-combining saving); link: the simulator's delivered bytes A→B, i.e. everything that crossed the link \
         (copy frames, TLS records, the priority lane, heartbeats and the releases of other volumes — the idle link carried {} bytes/s A→B), \
         so link ÷ payload − 1 is the whole framing + TLS overhead. The last-but-one column is what the node's \
         geomirror_peer_sent_bytes_total{{lane=\"bulk\"}} counts: the encoded frames of this volume's copies and releases plus their 4-byte \
         length prefix, without TLS. Target: link ÷ host ≤ 1.0.\n",
        r.runtime_s,
        r.idle_link_bytes_per_second.map_or_else(|| "n/a".into(), |x| format!("{x:.0}"))
    );
    for a in &r.amplification {
        if let Some(x) = a.ratio(a.wire_ab_bytes) {
            checks.push(format!(
                "{} copy amplification, {}: {x:.3} link bytes per host byte (target ≤ 1.0)",
                verdict(x <= 1.0),
                a.workload
            ));
        }
    }

    // Table 5.
    println!("## Catch-up after a burst written during a partition\n");
    let mut rows = Vec::new();
    for c in &r.catch_up {
        let link_mb = c.link_bits_per_second.map(|b| b as f64 / 8e6);
        rows.push(vec![
            c.link.clone(),
            format!("{:.0}", c.burst_bytes as f64 / (1 << 20) as f64),
            format!("{:.2}", c.burst_seconds),
            format!("{:.1}", c.backlog_bytes as f64 / (1 << 20) as f64),
            c.claims_during_burst.to_string(),
            format!("{:.2}", c.catch_up_seconds),
            format!("{:.0}", c.payload_megabytes_per_second),
            format!("{:.0}", c.wire_megabytes_per_second),
            link_mb.map_or_else(|| "unlimited".into(), |l| format!("{l:.0}")),
            link_mb.map_or_else(|| "n/a".into(), |l| format!("{:.2}", c.wire_megabytes_per_second / l)),
            format!("{:.1}", c.payload_megabytes_per_second * rtt_ms / 1e3),
            cpu_split(&c.load),
        ]);
    }
    print!(
        "{}",
        table::plain_markdown(
            &[
                "link",
                "burst MiB",
                "burst s",
                "backlog MiB (not durable at B at heal)",
                "claims during burst",
                "catch-up s",
                "payload MB/s",
                "link MB/s",
                "link cap MB/s",
                "link ÷ cap",
                "implied MB in flight (payload rate × RTT)",
                "CPUs during catch-up",
            ],
            &rows
        )
    );
    println!(
        "\nHow: volume `burst` (release_after 5m): site A first wrote its first {BURST_MIB} MiB (claims taken, then drained). Per row: the \
         simulator's bandwidth set, the link held (`POST /partition` hold, both directions: connections stay up, nothing delivered), the \
         same {BURST_MIB} MiB rewritten at A with fio 1 MiB sequential writes at QD8 (owned extents: local speed), the link healed, and \
         site A's /status polled every 10 ms until not_durable_at_peer_bytes was 0. Payload MB/s = backlog at the heal ÷ catch-up time \
         (10^6 bytes); link MB/s = bytes the simulator delivered A→B in that time (copy frames plus TLS records). A copy stream limited \
         by a fixed number of copies in flight would show a rate of copies × size ÷ RTT, independent of the cap. CPUs: each \
         process's CPU time from the heal until caught up ÷ that time (both nodes and the simulator share this machine's 2 CPUs).\n"
    );
    if let Some(c) = r.catch_up.iter().find(|c| c.link_bits_per_second.is_some()) {
        let cap = c.link_bits_per_second.map_or(0.0, |b| b as f64 / 8e6);
        let share = c.wire_megabytes_per_second / cap;
        checks.push(format!(
            "{} catch-up at {}: {:.0} MB/s payload, {:.0} MB/s on the link = {:.0} % of the {:.0} MB/s cap (target: link-limited, ≥ 80 %)",
            verdict(share >= 0.8),
            c.link,
            c.payload_megabytes_per_second,
            c.wire_megabytes_per_second,
            share * 100.0,
            cap
        ));
    }

    // Table 6.
    println!("## Copy tracking memory, every owned extent fully dirty\n");
    let t = &r.tracking;
    let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    let per_extent = t.tracking_bytes.filter(|_| t.owned_extents > 0).map(|b| b as f64 / t.owned_extents as f64);
    let growth_per_extent =
        (t.owned_extents > 0).then(|| t.resident_dirty.saturating_sub(t.resident_clean) as f64 / t.owned_extents as f64);
    let rows = vec![vec![
        t.owned_extents.to_string(),
        mib(t.not_durable_bytes),
        t.tracking_bytes.map_or_else(|| "n/a".into(), |b| b.to_string()),
        per_extent.map_or_else(|| "n/a".into(), |x| format!("{x:.0}")),
        mib(t.resident_clean),
        mib(t.resident_dirty),
        growth_per_extent.map_or_else(|| "n/a".into(), |x| format!("{x:.0}")),
        mib(t.resident_drained),
        format!("{:.2}", t.drain_seconds),
    ]];
    print!(
        "{}",
        table::plain_markdown(
            &[
                "owned extents",
                "not durable at B MiB",
                "tracking bytes",
                "tracking bytes per owned extent",
                "site A RSS clean MiB",
                "site A RSS dirty MiB",
                "RSS growth per owned extent, bytes",
                "site A RSS drained MiB",
                "drain s",
            ],
            &rows
        )
    );
    println!(
        "\nHow: volume `track` ({TRACK_MIB} MiB, 1 MiB extents, max_owned_extents = its extent count, release_after 5m): site A wrote all \
         of it (every extent claimed) and let it drain, then with the link held wrote all of it again with fio 1 MiB sequential writes \
         at QD8, so every owned extent is dirty in every block; RSS is VmRSS of site A's node from /proc, read before the rewrite \
         (clean), with the link held (dirty) and after the heal once drained; tracking bytes is the node's own count (`tracking_bytes` \
         in /status: per-extent block bitmaps, copies in flight, the send queue). RSS growth also holds allocator and buffer growth \
         of the rewrite, so it is an upper bound on what tracking costs.\n"
    );
    if let Some(x) = per_extent {
        checks.push(format!("{} copy tracking: {x:.0} bytes per fully dirty 1 MiB owned extent (target ≤ 1024)", verdict(x <= 1024.0)));
    }

    crate::claim_cost::print(&r.claim_cost, &mut checks);
    crate::table::print_targets(&checks);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_fit_the_phases() {
        let v = volumes();
        let names: Vec<&str> = v.iter().map(|v| v.name).collect();
        assert_eq!(names, ["own", "first", "pull", "p0", "p8", "p64", "amp", "burst", "track"]);
        let track = v.iter().find(|v| v.name == "track").unwrap();
        assert_eq!(u64::from(track.max_owned_extents) * pair::EXTENT_BYTES, track.size_bytes, "every extent of `track` can be owned");
        assert_eq!(v.iter().find(|v| v.name == "first").unwrap().predict_extents, 0);
        assert_eq!(v.iter().find(|v| v.name == "p64").unwrap().predict_extents, 64);
        // Every fresh-space workload fits its volume and the owned limit.
        const { assert!(FIRST_WRITES <= 1024 && BURST_MIB <= 1024) };
        let zipf_end = 512 + 512;
        assert!(zipf_end <= 1024);
    }

    #[test]
    fn first_write_job_skips_to_the_next_extent() {
        let j = job("x", "write:1020k", "4k", 1, "256m", Timing::Once, &[]);
        let args = j.args("nbd://h/first");
        assert!(args.contains(&"--rw=write:1020k".to_string()) && args.contains(&"--bs=4k".to_string()));
    }
}
