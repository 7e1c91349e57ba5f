//! The `side-by-side` scenario: for each RTT, geomirror (two sites, async)
//! against what a user would pick instead (PEERS.md): QEMU mirroring in
//! write-blocking and background copy mode, and plain qemu-nbd as the local
//! limit. Every replicated system gets its own `geomirror sim` with the same
//! settings between site A and site B; every host I/O is at site A, through
//! fio's nbd engine; freshness is probed at site B.

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
use crate::nbd::{self, XorShift};
use crate::pair::{self, Pair, VolumeSpec};
use crate::procs;
use crate::qemu_mirror::{CopyMode, QemuMirror};
use crate::sim;
use crate::stats::{median, median_of_present};
use crate::systems::{self, EXPORT, VOLUME_BYTES};
use crate::table::verdict;
use crate::table::{self, Format};

/// Options of `side-by-side`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Round-trip times of the simulated WAN, comma-separated; every system
    /// is measured at each.
    #[arg(long, default_value = "2ms,20ms", value_delimiter = ',')]
    rtt: Vec<String>,
    /// Rounds per RTT; each runs every job once per system, the order of the
    /// systems rotated every round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Measured seconds per fio job (after a 1 s ramp that is not counted).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runtime: u32,
    /// Freshness probes per replicated system and RTT.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    probes: u32,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Region every job touches and every probe writes into (prefilled at A).
const REGION: &str = "256m";
const REGION_BYTES: u64 = 256 << 20;
const REGION_TEXT: &str = "256 MiB";
const RAMP_S: u32 = 1;
/// Polling of a stale read at B.
const POLL_EVERY: Duration = Duration::from_millis(5);
const POLL_FOR: Duration = Duration::from_secs(2);
/// Longest wait for a replica to catch up between runs.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_BYTES: usize = 4096;

/// Column order in the tables.
const LABELS: [&str; 4] = ["geomirror", "qemu-nbd (local)", "qsd write-blocking", "qsd background"];

/// A system under test.
enum Kind {
    Geomirror(Box<Pair>),
    Local(systems::Target),
    Mirror(Box<QemuMirror>),
}

struct System {
    label: &'static str,
    kind: Kind,
}

impl System {
    fn uri_a(&self) -> String {
        match &self.kind {
            Kind::Geomirror(p) => p.a.uri(EXPORT),
            Kind::Local(t) => t.uri.clone(),
            Kind::Mirror(m) => m.uri_a.clone(),
        }
    }

    /// NBD address of site A and of the replica at site B.
    fn probe_addresses(&self) -> Option<(String, String)> {
        match &self.kind {
            Kind::Geomirror(p) => Some((p.a.nbd.clone(), p.b.nbd.clone())),
            Kind::Local(_) => None,
            Kind::Mirror(m) => Some((m.nbd_a.clone(), m.nbd_b.clone())),
        }
    }

    /// Site B's export, where hosts at B may write (geomirror's site B;
    /// the local server takes B's writes too); `None` for the QEMU mirrors,
    /// whose site B holds a replica that only the mirror job writes.
    fn uri_b(&self) -> Option<String> {
        match &self.kind {
            Kind::Geomirror(p) => Some(p.b.uri(EXPORT)),
            Kind::Local(t) => Some(t.uri.clone()),
            Kind::Mirror(_) => None,
        }
    }

    /// Every process of the system, site A's server first.
    fn pids(&self) -> Vec<u32> {
        match &self.kind {
            Kind::Geomirror(p) => p.pids(),
            Kind::Local(t) => vec![t.server.pid()],
            Kind::Mirror(m) => m.pids(),
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        match &mut self.kind {
            Kind::Geomirror(p) => p.check_alive(),
            Kind::Local(t) => t.server.check_alive(),
            Kind::Mirror(m) => {
                m.qsd.check_alive()?;
                m.qnbd_b.check_alive()?;
                m.sim.server.check_alive()
            }
        }
    }

    /// Waits until site B holds everything written at A (geomirror: A's
    /// not_durable_at_peer_bytes is 0; QEMU: the job's offset reached its
    /// len); returns how long that took, or `None` for the local system.
    fn settle(&mut self) -> Result<Option<Duration>> {
        match &mut self.kind {
            Kind::Geomirror(p) => Ok(Some(p.a.wait_durable(EXPORT, SETTLE_TIMEOUT)?)),
            Kind::Local(_) => Ok(None),
            Kind::Mirror(m) => Ok(Some(m.wait_in_sync(SETTLE_TIMEOUT)?)),
        }
    }
}

/// One fio run in the raw results.
#[derive(Serialize)]
struct RunRecord {
    rtt: String,
    system: &'static str,
    workload: &'static str,
    round: u32,
    attempt: u32,
    used: bool,
    stats: JobStats,
    load: Load,
    /// Time until site B held everything after this run (not part of the run).
    settle_seconds: Option<f64>,
    /// geomirror: claim round trips at A during the run.
    claim_round_trips: Option<u64>,
    /// CPUs' worth used by this system's processes (both sites and its
    /// simulator) during the run.
    system_cpus: f64,
    /// CPUs' worth used by site A's server alone (geomirror's site A,
    /// qemu-nbd, qemu-storage-daemon).
    site_a_cpus: f64,
    fio: Value,
}

/// One freshness probe.
#[derive(Serialize, Clone, Copy)]
struct Probe {
    offset: u64,
    /// Write at A, acknowledged (ms).
    write_ms: f64,
    /// First read at B (ms).
    first_read_ms: f64,
    /// The first read at B returned the new data.
    fresh: bool,
    /// When stale: ms from the write's acknowledgement until B returned
    /// the new data; `None` if not within the polling limit.
    lag_ms: Option<f64>,
}

/// Results of one RTT.
#[derive(Serialize)]
struct RttResult {
    rtt: String,
    link_settings: Option<sim::Settings>,
    prefill_mb_per_s: BTreeMap<&'static str, f64>,
    probes: BTreeMap<&'static str, Vec<Probe>>,
    /// QEMU mirrors: images identical after the job completed.
    identical_at_end: BTreeMap<&'static str, String>,
    runs: Vec<RunRecord>,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    command: Vec<String>,
    machine: Machine,
    loadavg_at_end: String,
    tools: BTreeMap<&'static str, String>,
    rounds: u32,
    runtime_s: u32,
    ramp_s: u32,
    probes: u32,
    pinned: bool,
    results: Vec<RttResult>,
    seconds_total: f64,
}

struct Workload {
    key: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
    /// Run at both sites at once (site A over the region, site B over the
    /// next [`REGION_TEXT`]); only systems whose site B takes writes, and
    /// only unpinned (both sites' hosts sharing the machine).
    both_sites: bool,
}

const WORKLOADS: [Workload; 4] = [
    Workload { key: "randwrite-4k-qd1", rw: "randwrite", bs: "4k", iodepth: 1, both_sites: false },
    Workload { key: "randwrite-4k-qd32", rw: "randwrite", bs: "4k", iodepth: 32, both_sites: false },
    Workload { key: "write-1m-qd8", rw: "write", bs: "1m", iodepth: 8, both_sites: false },
    Workload { key: "randwrite-4k-qd8-both", rw: "randwrite", bs: "4k", iodepth: 8, both_sites: true },
];

/// Runs the scenario and prints its report on stdout (progress on stderr).
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let common = &args.common;
    let rtts: Vec<(String, Duration)> =
        args.rtt.iter().map(|t| Ok((t.trim().to_string(), sim::parse_duration(t)?))).collect::<Result<_>>()?;
    if rtts.is_empty() {
        bail!("--rtt needs at least one round-trip time");
    }
    let machine = Machine::describe();
    if let Some(busy) = machine.cpu_busy_before.filter(|&b| b > 0.1) {
        eprintln!(
            "warning: the CPUs were {:.0} % busy just before the run: other work on this machine will skew the figures",
            busy * 100.0
        );
    }
    let geomirror_bin = common.geomirror_binary()?;
    let mut tools = BTreeMap::new();
    tools.insert("fio", procs::tool_version("fio", "install it with `apt-get install -y fio`")?);
    tools.insert("qemu-nbd", procs::tool_version("qemu-nbd", "install it with `apt-get install -y qemu-utils`")?);
    tools.insert(
        "qemu-storage-daemon",
        procs::tool_version("qemu-storage-daemon", "install it with `apt-get install -y qemu-system-common` (or qemu-storage-daemon)")?,
    );
    tools.insert("nbdinfo", procs::tool_version("nbdinfo", "install it with `apt-get install -y libnbd-bin`")?);
    tools.insert("geomirror", procs::tool_version(&geomirror_bin.display().to_string(), "pass --geomirror PATH")?);
    tools.insert("geomirror build", procs::build_info(&geomirror_bin));
    let dir = common.temp_dir()?;
    let work = dir.path();
    eprintln!("working in {}{}", work.display(), if common.keep { " (kept)" } else { "" });
    let per_rtt = f64::from(args.rounds) * 3.5 * 4.0 * (f64::from(args.runtime + RAMP_S) + 0.5) + 40.0;
    eprintln!("{} RTT(s) × about {per_rtt:.0} s each", rtts.len());

    let mut results = Vec::new();
    for (text, rtt) in &rtts {
        let rtt_dir = work.join(format!("rtt-{text}"));
        std::fs::create_dir_all(&rtt_dir)?;
        results.push(run_rtt(args, &geomirror_bin, &rtt_dir, text, *rtt).with_context(|| format!("at RTT {text}"))?);
    }
    let report = Report {
        benchmark: "side-by-side",
        command: std::env::args().collect(),
        machine,
        loadavg_at_end: machine::loadavg(),
        tools,
        rounds: args.rounds,
        runtime_s: args.runtime,
        ramp_s: RAMP_S,
        probes: args.probes,
        pinned: args.common.pin,
        results,
        seconds_total: started.elapsed().as_secs_f64(),
    };
    print_report(&report);
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report).context("serialise the results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        eprintln!("raw results saved to {}", path.display());
    }
    Ok(())
}

fn start_systems(geomirror: &Path, dir: &Path, rtt: Duration) -> Result<Vec<System>> {
    // release_after 5m: the prefilled region stays owned by A for the whole
    // RTT's measurements (the default 30 s could lapse while the other three
    // systems run, adding claims to geomirror's figures).
    let vol = VolumeSpec { release_after: "5m", ..VolumeSpec::default_named(EXPORT) };
    let pair = pair::start(geomirror, &dir.join("geomirror"), &[vol], rtt, None).context("start geomirror (two sites)")?;
    let local = systems::start_qemu_nbd(dir).context("start qemu-nbd")?;
    let wb = QemuMirror::start(geomirror, dir, "qsd-write-blocking", CopyMode::WriteBlocking, rtt)
        .context("start the write-blocking QEMU mirror")?;
    let bg = QemuMirror::start(geomirror, dir, "qsd-background", CopyMode::Background, rtt).context("start the background QEMU mirror")?;
    Ok(vec![
        System { label: LABELS[0], kind: Kind::Geomirror(Box::new(pair)) },
        System { label: LABELS[1], kind: Kind::Local(local) },
        System { label: LABELS[2], kind: Kind::Mirror(Box::new(wb)) },
        System { label: LABELS[3], kind: Kind::Mirror(Box::new(bg)) },
    ])
}

fn run_rtt(args: &Args, geomirror: &Path, dir: &Path, rtt_text: &str, rtt: Duration) -> Result<RttResult> {
    eprintln!("== RTT {rtt_text}: starting geomirror (2 sites + sim), qemu-nbd, 2 × (qemu-storage-daemon + qemu-nbd + sim)");
    let mut systems = start_systems(geomirror, dir, rtt)?;
    let link_settings = match &systems[0].kind {
        Kind::Geomirror(p) => p.sim.status().ok().map(|s| s.settings),
        _ => None,
    };
    let all_pids: Vec<u32> = systems.iter().flat_map(System::pids).collect();
    // Where each system's processes are in `all_pids`.
    let mut ranges = Vec::new();
    let mut start = 0;
    for s in &systems {
        let n = s.pids().len();
        ranges.push(start..start + n);
        start += n;
    }

    let mut prefill_mb_per_s = BTreeMap::new();
    for s in &mut systems {
        let j = Job {
            name: "prefill".into(),
            rw: "write",
            block_size: "1m",
            iodepth: 8,
            size: REGION.into(),
            timing: Timing::Once,
            extra: vec![],
        };
        let run = fio::run(&j, &s.uri_a(), dir)?;
        if let Some(uri_b) = s.uri_b().filter(|_| !args.common.pin) {
            // Site B's region of the both-sites job, written at B (geomirror:
            // B owns it from then on).
            let j = Job { name: "prefill-b".into(), extra: vec![format!("--offset={REGION_BYTES}")], ..j.clone() };
            fio::run(&j, &uri_b, dir)?;
        }
        let settle = s.settle()?;
        eprintln!(
            "prefilled {REGION_TEXT} of {} at {:.0} MB/s{}",
            s.label,
            run.stats.write.bw_bytes / 1e6,
            settle.map_or(String::new(), |d| format!(", site B caught up {:.2} s later", d.as_secs_f64()))
        );
        prefill_mb_per_s.insert(s.label, run.stats.write.bw_bytes / 1e6);
    }

    let mut probes = BTreeMap::new();
    let mut rng = XorShift::new(0x5eed ^ rtt.as_micros() as u64);
    for s in &mut systems {
        if let Some((a, b)) = s.probe_addresses() {
            let p = freshness(&a, &b, args.probes, &mut rng).with_context(|| format!("freshness probes of {}", s.label))?;
            let fresh = p.iter().filter(|p| p.fresh).count();
            let lags: Vec<f64> = p.iter().filter_map(|p| p.lag_ms).collect();
            eprintln!(
                "freshness {}: {fresh}/{} fresh at B; stale lag p50 {} ms",
                s.label,
                p.len(),
                median(&lags).map_or_else(|| "-".into(), |x| format!("{x:.1}"))
            );
            s.settle()?;
            probes.insert(s.label, p);
        }
    }

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for w in &WORKLOADS {
            let j = Job {
                name: w.key.into(),
                rw: w.rw,
                block_size: w.bs,
                iodepth: w.iodepth,
                size: REGION.into(),
                timing: Timing::TimeBased { runtime_s: args.runtime, ramp_s: RAMP_S },
                extra: vec![],
            };
            if w.both_sites && args.common.pin {
                continue;
            }
            let n = systems.len();
            for k in 0..n {
                let index = (k + round as usize - 1) % n;
                let s = &mut systems[index];
                let uri_b = s.uri_b();
                if w.both_sites && uri_b.is_none() {
                    continue;
                }
                for attempt in 0..=args.common.retries {
                    s.check_alive()?;
                    let claims_before = match &s.kind {
                        Kind::Geomirror(p) => Some(p.a.status()?.replication(EXPORT)?.claim_round_trips),
                        _ => None,
                    };
                    let probe = load::Probe::start(&all_pids);
                    let run = match uri_b.as_deref().filter(|_| w.both_sites) {
                        Some(uri_b) => fio::run_two_sites(&j, &s.uri_a(), uri_b, REGION_BYTES, dir),
                        None => fio::run(&j, &s.uri_a(), dir),
                    }
                    .with_context(|| format!("{} on {}", w.key, s.label))?;
                    let load = probe.finish();
                    let claim_round_trips = match (&s.kind, claims_before) {
                        (Kind::Geomirror(p), Some(b)) => Some(p.a.status()?.replication(EXPORT)?.claim_round_trips.saturating_sub(b)),
                        _ => None,
                    };
                    let settle_seconds = s.settle()?.map(|d| d.as_secs_f64());
                    let system_cpus = load.cpus_per_process.get(ranges[index].clone()).map_or(0.0, |c| c.iter().sum());
                    let site_a_cpus = load.cpus_per_process.get(ranges[index].start).copied().unwrap_or(0.0);
                    let d = &run.stats.write;
                    eprintln!(
                        "rtt {rtt_text} round {round}/{} {:<17} {:<19} IOPS {:.0}, {:.0} MB/s, clat p50 {} µs, lat p50 {} µs{}{}, other load {}, steal {}",
                        args.rounds,
                        w.key,
                        s.label,
                        d.iops,
                        d.bw_bytes / 1e6,
                        table::cell(d.clat_p50_us, Format::OneDecimal),
                        table::cell(d.lat_p50_us, Format::OneDecimal),
                        claim_round_trips.map_or(String::new(), |c| format!(", claims {c}")),
                        settle_seconds.map_or(String::new(), |x| format!(", B caught up after {x:.2} s")),
                        load.other_cpus.map_or_else(|| "n/a".into(), |c| format!("{c:.2} CPUs")),
                        load.steal_cpus.map_or_else(|| "n/a".into(), |c| format!("{c:.2} CPUs")),
                    );
                    // Only the QD1 latency runs are repeated (their p50 is what the
                    // targets compare; throughput is less sensitive), which bounds the run time.
                    let retry = w.iodepth == 1 && load.disturbed() && attempt < args.common.retries;
                    runs.push(RunRecord {
                        rtt: rtt_text.to_string(),
                        system: s.label,
                        workload: w.key,
                        round,
                        attempt,
                        used: !retry,
                        stats: run.stats,
                        load,
                        settle_seconds,
                        claim_round_trips,
                        system_cpus,
                        site_a_cpus,
                        fio: run.raw,
                    });
                    if !retry {
                        break;
                    }
                    eprintln!("  other load above {OTHER_LOAD_FLAG} CPUs or steal above {STEAL_FLAG} CPUs: repeating this run");
                }
            }
        }
    }

    let mut identical_at_end = BTreeMap::new();
    for s in &mut systems {
        if let Kind::Mirror(m) = &mut s.kind {
            let verdict = match m.finish_and_compare(dir, SETTLE_TIMEOUT) {
                Ok(true) => "identical".to_string(),
                Ok(false) => "DIFFERENT".to_string(),
                Err(e) => format!("not checked: {e:#}"),
            };
            eprintln!("{}: images after the job completed: {verdict}", s.label);
            identical_at_end.insert(s.label, verdict);
        }
    }
    drop(systems);
    Ok(RttResult { rtt: rtt_text.to_string(), link_settings, prefill_mb_per_s, probes, identical_at_end, runs })
}

/// `n` probes: a fresh random 4 KiB pattern written at A at a random
/// 4 KiB-aligned offset of the region, then read at B at once; when stale,
/// B is polled every [`POLL_EVERY`] up to [`POLL_FOR`].
fn freshness(addr_a: &str, addr_b: &str, n: u32, rng: &mut XorShift) -> Result<Vec<Probe>> {
    let mut a = nbd::Client::connect(addr_a, EXPORT)?;
    let mut b = nbd::Client::connect(addr_b, EXPORT)?;
    if a.size() != VOLUME_BYTES || b.size() != VOLUME_BYTES {
        bail!("export sizes differ: A {} B {} bytes", a.size(), b.size());
    }
    let mut out = Vec::new();
    let mut pattern = vec![0u8; PROBE_BYTES];
    let mut back = vec![0u8; PROBE_BYTES];
    for _ in 0..n {
        let offset = (rng.next_u64() % (REGION_BYTES / PROBE_BYTES as u64)) * PROBE_BYTES as u64;
        rng.fill(&mut pattern);
        let t = Instant::now();
        a.write(offset, &pattern)?;
        let acked = Instant::now();
        let write_ms = (acked - t).as_secs_f64() * 1e3;
        b.read(offset, &mut back)?;
        let first_read_ms = acked.elapsed().as_secs_f64() * 1e3;
        let fresh = back == pattern;
        let mut lag_ms = None;
        if !fresh {
            while acked.elapsed() < POLL_FOR {
                std::thread::sleep(POLL_EVERY);
                b.read(offset, &mut back)?;
                if back == pattern {
                    lag_ms = Some(acked.elapsed().as_secs_f64() * 1e3);
                    break;
                }
            }
        }
        out.push(Probe { offset, write_ms, first_read_ms, fresh, lag_ms });
    }
    Ok(out)
}

// ---------------------------------------------------------------- report

/// CPU µs per host write of a run, from CPUs' worth used over it.
fn cpu_per_write(cpus: f64, x: &RunRecord) -> Option<f64> {
    (x.stats.write.iops > 0.0).then(|| cpus / x.stats.write.iops * 1e6)
}

fn runs_of<'a>(r: &'a RttResult, system: &str, workload: &str) -> Vec<&'a RunRecord> {
    r.runs.iter().filter(|x| x.used && x.system == system && x.workload == workload).collect()
}

fn med(runs: &[&RunRecord], f: impl Fn(&RunRecord) -> Option<f64>) -> Option<f64> {
    median_of_present(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
}

fn print_report(report: &Report) {
    let m = &report.machine;
    m.print_header("side-by-side", &report.loadavg_at_end, &report.tools, &report.command);
    println!("- total time: {:.0} s", report.seconds_total);
    if report.pinned {
        println!("  (here: qemu-nbd and qemu-storage-daemon at site A on CPU 0; site B's qemu-nbd on CPU 1)");
    }
    println!();
    let mut checks = Vec::new();
    for r in &report.results {
        println!("## RTT {}\n", r.rtt);
        type Pick = fn(&RunRecord) -> Option<f64>;
        let figures: [(&str, &str, Pick, Format); 14] = [
            ("4 KiB randwrite QD1, IOPS", "randwrite-4k-qd1", |x| Some(x.stats.write.iops), Format::Integer),
            ("4 KiB randwrite QD1, clat p50 µs", "randwrite-4k-qd1", |x| x.stats.write.clat_p50_us, Format::OneDecimal),
            ("4 KiB randwrite QD1, clat p99 µs", "randwrite-4k-qd1", |x| x.stats.write.clat_p99_us, Format::OneDecimal),
            ("4 KiB randwrite QD1, total lat p50 µs", "randwrite-4k-qd1", |x| x.stats.write.lat_p50_us, Format::OneDecimal),
            ("4 KiB randwrite QD1, total lat p99 µs", "randwrite-4k-qd1", |x| x.stats.write.lat_p99_us, Format::OneDecimal),
            (
                "4 KiB randwrite QD1, CPU µs per write (all the system's processes)",
                "randwrite-4k-qd1",
                |x| cpu_per_write(x.system_cpus, x),
                Format::OneDecimal,
            ),
            (
                "4 KiB randwrite QD1, CPU µs per write (site A's server)",
                "randwrite-4k-qd1",
                |x| cpu_per_write(x.site_a_cpus, x),
                Format::OneDecimal,
            ),
            ("4 KiB randwrite QD32, IOPS", "randwrite-4k-qd32", |x| Some(x.stats.write.iops), Format::Integer),
            ("4 KiB randwrite QD32, total lat p99 µs", "randwrite-4k-qd32", |x| x.stats.write.lat_p99_us, Format::OneDecimal),
            (
                "4 KiB randwrite QD32, CPU µs per write (all the system's processes)",
                "randwrite-4k-qd32",
                |x| cpu_per_write(x.system_cpus, x),
                Format::OneDecimal,
            ),
            (
                "4 KiB randwrite QD32, CPU µs per write (site A's server)",
                "randwrite-4k-qd32",
                |x| cpu_per_write(x.site_a_cpus, x),
                Format::OneDecimal,
            ),
            ("1 MiB seq write QD8, MB/s", "write-1m-qd8", |x| Some(x.stats.write.bw_bytes / 1e6), Format::Integer),
            ("site B caught up after the 1 MiB seq run, s", "write-1m-qd8", |x| x.settle_seconds, Format::OneDecimal),
            (
                "both sites writing 4 KiB randwrite QD8 each (own regions), IOPS summed",
                "randwrite-4k-qd8-both",
                |x| Some(x.stats.write.iops),
                Format::Integer,
            ),
        ];
        let mut rows = Vec::new();
        let value = |label: &str, workload: &str, pick: Pick| med(&runs_of(r, label, workload), pick);
        for (name, workload, pick, format) in figures {
            let mut row = vec![name.to_string()];
            row.extend(LABELS.iter().map(|l| {
                let v = value(l, workload, pick);
                let flag = runs_of(r, l, workload).iter().any(|x| x.load.disturbed());
                table::cell(v, format) + if flag && v.is_some() { " *" } else { "" }
            }));
            rows.push(row);
        }
        let fresh_row = |f: &dyn Fn(&[Probe]) -> String| -> Vec<String> {
            LABELS.iter().map(|l| r.probes.get(l).map_or_else(|| "—".to_string(), |p| f(p))).collect()
        };
        let mut row = vec!["read at B right after the write at A: fresh".to_string()];
        row.extend(fresh_row(&|p| format!("{}/{}", p.iter().filter(|x| x.fresh).count(), p.len())));
        rows.push(row);
        let mut row = vec!["stale reads: lag p50 / max ms (until B showed it)".to_string()];
        row.extend(fresh_row(&|p| {
            let lags: Vec<f64> = p.iter().filter_map(|x| x.lag_ms).collect();
            let never = p.iter().filter(|x| !x.fresh && x.lag_ms.is_none()).count();
            let base = match (median(&lags), lags.iter().copied().reduce(f64::max)) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
                _ => "—".into(),
            };
            if never > 0 { format!("{base} ({never} not within {} s)", POLL_FOR.as_secs()) } else { base }
        }));
        rows.push(row);
        let mut row = vec!["probe: write at A / first read at B, median ms".to_string()];
        row.extend(fresh_row(&|p| {
            let w: Vec<f64> = p.iter().map(|x| x.write_ms).collect();
            let rd: Vec<f64> = p.iter().map(|x| x.first_read_ms).collect();
            format!("{:.2} / {:.2}", median(&w).unwrap_or(f64::NAN), median(&rd).unwrap_or(f64::NAN))
        }));
        rows.push(row);
        let mut header = vec!["figure"];
        header.extend(LABELS);
        print!("{}", table::plain_markdown(&header, &rows));

        // Pinned, fio and the local server share CPU 0: a request is often
        // served inside fio's submit call, so clat alone says little and the
        // checks use total latency (slat + clat).
        let p50 = |label: &str| {
            value(
                label,
                "randwrite-4k-qd1",
                if report.pinned { |x: &RunRecord| x.stats.write.lat_p50_us } else { |x: &RunRecord| x.stats.write.clat_p50_us },
            )
        };
        let lat_kind = if report.pinned { "total lat" } else { "clat" };
        let (g50, q50, wb50) = (p50(LABELS[0]), p50(LABELS[1]), p50(LABELS[2]));
        let gl50 = value(LABELS[0], "randwrite-4k-qd1", |x| x.stats.write.lat_p50_us);
        let ql50 = value(LABELS[1], "randwrite-4k-qd1", |x| x.stats.write.lat_p50_us);
        let wbl50 = value(LABELS[2], "randwrite-4k-qd1", |x| x.stats.write.lat_p50_us);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).and_then(|(a, b)| (b != 0.0).then(|| a / b));
        let f = |x: Option<f64>| x.map_or_else(|| "n/a".into(), |v| format!("{v:.2}"));
        println!(
            "\nRatios (4 KiB randwrite QD1 p50): geomirror / qemu-nbd = {} (clat), {} (total lat); write-blocking / geomirror = {} (clat), {} (total lat).",
            f(ratio(g50, q50)),
            f(ratio(gl50, ql50)),
            f(ratio(wb50, g50)),
            f(ratio(wbl50, gl50)),
        );
        let claims: u64 = r.runs.iter().filter(|x| x.used && x.system == LABELS[0]).filter_map(|x| x.claim_round_trips).sum();
        let other: Vec<f64> = r.runs.iter().filter(|x| x.used).filter_map(|x| x.load.other_cpus).collect();
        let steal: Vec<f64> = r.runs.iter().filter(|x| x.used).filter_map(|x| x.load.steal_cpus).collect();
        let repeated = r.runs.iter().filter(|x| !x.used).count();
        let identical: Vec<String> = r.identical_at_end.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let delay = r.link_settings.as_ref().map_or_else(
            || "the configured".into(),
            |s| format!("{:.1} + {:.1} ms one-way", s.delay_ab_us as f64 / 1e3, s.delay_ba_us as f64 / 1e3),
        );
        println!(
            "\nHow: every replicated system had its own `geomirror sim` ({delay}, bandwidth unlimited) between site A and site B. geomirror: two \
             nodes (async; volume `vol0` 1 GiB, 1 MiB extents, predict_extents 8, release_after 5m so the prefilled region stays owned by A \
             for the whole RTT). QEMU: qemu-storage-daemon at A exporting a raw file over NBD with a blockdev-mirror job (sync none, copy-mode \
             write-blocking or background) to site B's qemu-nbd through the simulator; both images started identical (sparse). qemu-nbd \
             (local): one qemu-nbd at A, no replication. Each export's first {REGION_TEXT} was written once at A (1 MiB QD8), then every system \
             was let catch up. fio's nbd engine at A, one connection, over those {REGION_TEXT}, {} s after a {RAMP_S} s ramp, {} round(s) with \
             the order of systems rotated each round, medians over rounds; after every run the benchmark waited (outside the measurement) until \
             site B held everything (`caught up` row). Freshness: {} probes per system, each a fresh random 4 KiB pattern written at A at a \
             random 4 KiB offset of the region with a small NBD client, then read at once at B (geomirror: site B's NBD export; QEMU: the \
             target qemu-nbd, i.e. B's replica, read at site B), polled every {} ms up to {} s when stale. CPU µs per write: CPU time of all the system's processes (both sites and its simulator), \
             or of site A's server alone (geomirror's site A node, qemu-nbd, qemu-storage-daemon), over the fio run ÷ writes, from /proc \
             (ramp and connection included, so an estimate). Both sites writing (unpinned runs only; not the QEMU mirrors, whose site B \
             is a replica): one fio process with a job at A over the region and one at B over the next {REGION_TEXT} (geomirror: written \
             at B once before, so B owns it; qemu-nbd: both jobs on the one server), IOPS summed. geomirror claims during its \
             measured runs: {claims}. Replica check (`qemu-img compare` after `block-job-cancel` completed the job): {}. Other load (CPU of \
             user-space processes not under test): median {} CPUs, max {} CPUs; hypervisor steal: median {} CPUs, max {} CPUs (QD1 latency \
             follows steal on this VM). A QD1 run with more than {OTHER_LOAD_FLAG} CPUs of other load or {STEAL_FLAG} CPUs of steal was \
             repeated (at most --retries times; {repeated} repeated); `*`: a disturbed run was kept.\n",
            report.runtime_s,
            report.rounds,
            report.probes,
            POLL_EVERY.as_millis(),
            POLL_FOR.as_secs(),
            if identical.is_empty() { "n/a".into() } else { identical.join("; ") },
            median(&other).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
            other.iter().copied().reduce(f64::max).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
            median(&steal).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
            steal.iter().copied().reduce(f64::max).map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
        );
        if let Some(x) = ratio(g50, q50) {
            checks.push(format!(
                "{} RTT {}: geomirror / qemu-nbd 4 KiB randwrite QD1 {lat_kind} p50 = {x:.2} (target ≤ 1.2)",
                verdict(x <= 1.2),
                r.rtt
            ));
        }
        let rtt_ms = r.link_settings.as_ref().map_or(0.0, |s| (s.delay_ab_us + s.delay_ba_us) as f64 / 1e3);
        if let Some(x) = ratio(wb50, g50) {
            if rtt_ms >= 19.0 {
                checks.push(format!(
                    "{} RTT {}: write-blocking / geomirror 4 KiB randwrite QD1 {lat_kind} p50 = {x:.0} (target ≥ 100)",
                    verdict(x >= 100.0),
                    r.rtt
                ));
            } else {
                checks.push(format!(
                    "info RTT {}: write-blocking / geomirror 4 KiB randwrite QD1 {lat_kind} p50 = {x:.1} (target only at 20 ms)",
                    r.rtt
                ));
            }
        }
        // The data-path targets (issue "the data path's CPU cost"): ratios
        // geomirror / qemu-nbd in this run; pinned ones with the peer on the
        // other CPU, the rest with everything sharing both.
        let g = |workload: &str, pick: Pick| value(LABELS[0], workload, pick);
        let q = |workload: &str, pick: Pick| value(LABELS[1], workload, pick);
        let both = |workload: &str, pick: Pick| ratio(g(workload, pick), q(workload, pick));
        let iops: Pick = |x| Some(x.stats.write.iops);
        let mut target = |name: &str, x: Option<f64>, at_most: bool, bound: f64| {
            if let Some(x) = x {
                let pass = if at_most { x <= bound } else { x >= bound };
                let op = if at_most { "≤" } else { "≥" };
                checks.push(format!("{} RTT {}: {name}, geomirror / qemu-nbd = {x:.2} (target {op} {bound})", verdict(pass), r.rtt));
            }
        };
        if report.pinned {
            target("pinned 4 KiB QD1 IOPS", both("randwrite-4k-qd1", iops), false, 0.95);
            target("pinned 4 KiB QD1 total lat p50", both("randwrite-4k-qd1", |x| x.stats.write.lat_p50_us), true, 1.05);
            target("pinned 4 KiB QD1 total lat p99", both("randwrite-4k-qd1", |x| x.stats.write.lat_p99_us), true, 1.5);
            target("pinned 4 KiB QD32 IOPS", both("randwrite-4k-qd32", iops), false, 0.9);
            target("pinned 1 MiB QD8 MB/s", both("write-1m-qd8", |x| Some(x.stats.write.bw_bytes)), false, 0.95);
            target("pinned QD1 CPU per write, site A's server", both("randwrite-4k-qd1", |x| cpu_per_write(x.site_a_cpus, x)), true, 1.3);
            target("pinned QD32 CPU per write, site A's server", both("randwrite-4k-qd32", |x| cpu_per_write(x.site_a_cpus, x)), true, 1.3);
        } else {
            target("unpinned 4 KiB QD32 IOPS", both("randwrite-4k-qd32", iops), false, 0.7);
            target("unpinned both sites writing, IOPS summed", both("randwrite-4k-qd8-both", iops), false, 0.7);
        }
        if let Some(p) = r.probes.get(LABELS[0]) {
            let fresh = p.iter().filter(|x| x.fresh).count();
            checks.push(format!(
                "{} RTT {}: geomirror reads at B fresh in {fresh}/{} probes (target: all)",
                verdict(fresh == p.len()),
                r.rtt,
                p.len()
            ));
        }
    }
    crate::table::print_targets(&checks);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_labels_cover_every_system() {
        assert_eq!(LABELS.len(), 4);
        assert_eq!(REGION_BYTES, 256 << 20);
        const { assert!(REGION_BYTES <= VOLUME_BYTES) };
    }
}
