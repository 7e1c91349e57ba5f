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

use crate::CommonArgs;
use crate::lineup::{
    self, Header, Kind, Lineup, RAMP_S, REGION_BYTES, REGION_TEXT, RoundInfo, RunRecord, System, any_disturbed, med, runs_of,
};
use crate::nbd::{self, XorShift};
use crate::pair::{self, VolumeSpec};
use crate::qemu_mirror::{CopyMode, QemuMirror};
use crate::sim;
use crate::stats::median;
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

/// Polling of a stale read at B.
const POLL_EVERY: Duration = Duration::from_millis(5);
const POLL_FOR: Duration = Duration::from_secs(2);
const PROBE_BYTES: usize = 4096;

/// Column order in the tables.
const LABELS: [&str; 4] = ["geomirror", "qemu-nbd (local)", "qsd write-blocking", "qsd background"];

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
    #[serde(flatten)]
    header: Header,
    probes: u32,
    results: Vec<RttResult>,
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
    let per_rtt = f64::from(args.rounds) * 3.5 * 4.0 * (f64::from(args.runtime + RAMP_S) + 0.5) + 40.0;
    let (header, results) =
        lineup::run_rtts("side-by-side", &args.common, &args.rtt, (args.rounds, args.runtime), per_rtt, |geomirror, dir, text, rtt| {
            run_rtt(args, geomirror, dir, text, rtt)
        })?;
    let report = Report { header, probes: args.probes, results };
    print_report(&report);
    args.common.save_json(&report)
}

fn start_systems(geomirror: &Path, dir: &Path, rtt: Duration) -> Result<Lineup> {
    // release_after 5m: the prefilled region stays owned by A for the whole
    // RTT's measurements (the default 30 s could lapse while the other three
    // systems run, adding claims to geomirror's figures).
    let vol = VolumeSpec { release_after: "5m", ..VolumeSpec::default_named(EXPORT) };
    let pair = pair::start(geomirror, &dir.join("geomirror"), &[vol], rtt, None).context("start geomirror (two sites)")?;
    let local = systems::start_qemu_nbd(dir).context("start qemu-nbd")?;
    let wb = QemuMirror::start(geomirror, dir, "qsd-write-blocking", CopyMode::WriteBlocking, rtt)
        .context("start the write-blocking QEMU mirror")?;
    let bg = QemuMirror::start(geomirror, dir, "qsd-background", CopyMode::Background, rtt).context("start the background QEMU mirror")?;
    Ok(Lineup::new(vec![
        lineup::geomirror_export(LABELS[0], pair),
        System { label: LABELS[1], kind: Kind::Local(local) },
        System { label: LABELS[2], kind: Kind::Mirror(Box::new(wb)) },
        System { label: LABELS[3], kind: Kind::Mirror(Box::new(bg)) },
    ]))
}

fn run_rtt(args: &Args, geomirror: &Path, dir: &Path, rtt_text: &str, rtt: Duration) -> Result<RttResult> {
    eprintln!("== RTT {rtt_text}: starting geomirror (2 sites + sim), qemu-nbd, 2 × (qemu-storage-daemon + qemu-nbd + sim)");
    let mut lineup = start_systems(geomirror, dir, rtt)?;
    let link_settings = lineup.link_settings();
    // Site B's region of the both-sites job, written at B (geomirror: B
    // owns it from then on).
    let b_offset = (!args.common.pin).then_some(REGION_BYTES);
    let prefill_mb_per_s = lineup.prefill(b_offset, dir)?;

    let mut probes = BTreeMap::new();
    let mut rng = XorShift::new(0x5eed ^ rtt.as_micros() as u64);
    for s in &mut lineup.systems {
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
            let j = lineup::timed_job(w.key, w.rw, w.bs, w.iodepth, args.runtime, vec![]);
            if w.both_sites && args.common.pin {
                continue;
            }
            let info = RoundInfo { rtt: rtt_text, workload: w.key, round, rounds: args.rounds, retries: args.common.retries };
            runs.extend(lineup.round(&j, w.both_sites.then_some(REGION_BYTES), &info, dir)?);
        }
    }

    let mut identical_at_end = BTreeMap::new();
    for s in &mut lineup.systems {
        if let Kind::Mirror(m) = &mut s.kind {
            let verdict = match m.finish_and_compare(dir, lineup::SETTLE_TIMEOUT) {
                Ok(true) => "identical".to_string(),
                Ok(false) => "DIFFERENT".to_string(),
                Err(e) => format!("not checked: {e:#}"),
            };
            eprintln!("{}: images after the job completed: {verdict}", s.label);
            identical_at_end.insert(s.label, verdict);
        }
    }
    drop(lineup);
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

fn print_report(report: &Report) {
    report.header.print();
    if report.header.pinned {
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
        let value = |label: &str, workload: &str, pick: Pick| med(&runs_of(&r.runs, label, workload), pick);
        for (name, workload, pick, format) in figures {
            let mut row = vec![name.to_string()];
            row.extend(LABELS.iter().map(|l| {
                let v = value(l, workload, pick);
                let flag = any_disturbed(&runs_of(&r.runs, l, workload));
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
                if report.header.pinned { |x: &RunRecord| x.stats.write.lat_p50_us } else { |x: &RunRecord| x.stats.write.clat_p50_us },
            )
        };
        let lat_kind = if report.header.pinned { "total lat" } else { "clat" };
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
        let claims = lineup::claims(&r.runs, LABELS[0]);
        let identical: Vec<String> = r.identical_at_end.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let delay = lineup::link_delay(r.link_settings.as_ref());
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
             measured runs: {claims}. Replica check (`qemu-img compare` after `block-job-cancel` completed the job): {}. {}\n",
            report.header.runtime_s,
            report.header.rounds,
            report.probes,
            POLL_EVERY.as_millis(),
            POLL_FOR.as_secs(),
            if identical.is_empty() { "n/a".into() } else { identical.join("; ") },
            lineup::machine_state(&r.runs),
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
        if report.header.pinned {
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
