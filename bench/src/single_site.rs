//! The `single-site` scenario: one geomirror node against qemu-nbd, both on
//! the same machine and filesystem, driven by the same fio jobs (see the
//! crate documentation for the method).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::CommonArgs;
use crate::fio::{self, Direction, Job, JobStats, Timing};
use crate::machine::{self, CpuTimes, Machine};
use crate::procs::{self, ProcUsage};
use crate::stats::median_of_present;
use crate::systems::{self, Target as System, VOLUME_BYTES};
use crate::table::{self, Comparison, Format, Row, Series, Target};

/// Options of `single-site`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Rounds; each runs every job once per system, systems alternated.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Measured seconds per fio job (after a 1 s ramp that is not counted).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runtime: u32,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Region of each export every job touches, from offset 0 (fio `--size`).
const REGION: &str = "256m";
/// [`REGION`] for people.
const REGION_TEXT: &str = "256 MiB";
/// Seconds of warm-up before each measured job (fio `--ramp_time`).
const RAMP_S: u32 = 1;
/// Other load (CPUs' worth) above which a run counts as disturbed.
const OTHER_LOAD_FLAG: f64 = 0.2;

/// A figure read from one direction of a fio job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Figure {
    Iops,
    MegabytesPerSecond,
    ClatP50,
    ClatP99,
    LatP50,
    /// Server CPU time per request (from /proc; see [`ServerCost`]).
    ServerCpuPerRequest,
    /// Server context switches per request.
    ServerSwitchesPerRequest,
}

impl Figure {
    fn label(self) -> &'static str {
        match self {
            Figure::Iops => "IOPS",
            Figure::MegabytesPerSecond => "MB/s",
            Figure::ClatP50 => "clat p50 µs",
            Figure::ClatP99 => "clat p99 µs",
            Figure::LatP50 => "total lat p50 µs (slat+clat)",
            Figure::ServerCpuPerRequest => "server CPU µs/request",
            Figure::ServerSwitchesPerRequest => "server context switches/request",
        }
    }

    fn value(self, run: &RunRecord, direction: Direction) -> Option<f64> {
        let d = run.stats.dir(direction);
        match self {
            Figure::Iops => Some(d.iops),
            Figure::MegabytesPerSecond => Some(d.bw_bytes / 1e6),
            Figure::ClatP50 => d.clat_p50_us,
            Figure::ClatP99 => d.clat_p99_us,
            Figure::LatP50 => d.lat_p50_us,
            Figure::ServerCpuPerRequest => run.server.per_request(run.server.cpu_seconds * 1e6, d.iops),
            Figure::ServerSwitchesPerRequest => run.server.per_request(run.server.context_switches as f64, d.iops),
        }
    }

    fn format(self) -> Format {
        match self {
            Figure::Iops | Figure::MegabytesPerSecond => Format::Integer,
            Figure::ClatP50 | Figure::ClatP99 | Figure::LatP50 | Figure::ServerCpuPerRequest | Figure::ServerSwitchesPerRequest => {
                Format::OneDecimal
            }
        }
    }

    /// The geomirror/qemu-nbd ratio target: throughput within 10 %, median
    /// latency within 10 %: completion latency, or total latency when
    /// pinned (fio and the server then share a CPU, and a request is often
    /// served inside fio's submit call, leaving clat near zero). Tails are
    /// shown but not checked.
    fn target(self) -> Option<Target> {
        let pinned = crate::procs::is_pinned();
        match self {
            Figure::Iops | Figure::MegabytesPerSecond => Some(Target::AtLeast(0.9)),
            Figure::ClatP50 if !pinned => Some(Target::AtMost(1.1)),
            Figure::LatP50 if pinned => Some(Target::AtMost(1.1)),
            Figure::ClatP50 | Figure::LatP50 | Figure::ClatP99 | Figure::ServerCpuPerRequest | Figure::ServerSwitchesPerRequest => None,
        }
    }
}

/// One measured workload and the figures reported from it.
struct Workload {
    /// fio job name, also the key in the JSON results.
    key: &'static str,
    /// Human title for tables.
    title: &'static str,
    rw: &'static str,
    block_size: &'static str,
    iodepth: u32,
    figures: &'static [Figure],
}

impl Workload {
    fn job(&self, runtime_s: u32) -> Job {
        Job {
            name: self.key.to_string(),
            rw: self.rw,
            block_size: self.block_size,
            iodepth: self.iodepth,
            size: REGION.to_string(),
            timing: Timing::TimeBased { runtime_s, ramp_s: RAMP_S },
            extra: Vec::new(),
        }
    }

    fn figure_label(&self, figure: Figure) -> String {
        format!("{}, {}", self.title, figure.label())
    }
}

/// Figures of the second table (server cost), for every workload.
const COST_FIGURES: &[Figure] = &[Figure::ServerCpuPerRequest, Figure::ServerSwitchesPerRequest];

const QD1_FIGURES: &[Figure] = &[Figure::Iops, Figure::ClatP50, Figure::ClatP99, Figure::LatP50];

const WORKLOADS: &[Workload] = &[
    Workload { key: "randwrite-4k-qd1", title: "4 KiB randwrite QD1", rw: "randwrite", block_size: "4k", iodepth: 1, figures: QD1_FIGURES },
    Workload { key: "randread-4k-qd1", title: "4 KiB randread QD1", rw: "randread", block_size: "4k", iodepth: 1, figures: QD1_FIGURES },
    Workload {
        key: "randwrite-4k-qd32",
        title: "4 KiB randwrite QD32",
        rw: "randwrite",
        block_size: "4k",
        iodepth: 32,
        figures: &[Figure::Iops],
    },
    Workload {
        key: "write-1m-qd8",
        title: "1 MiB seq write QD8",
        rw: "write",
        block_size: "1m",
        iodepth: 8,
        figures: &[Figure::MegabytesPerSecond],
    },
];

/// What the server process used while one fio job ran (ramp included):
/// differences of two [`ProcUsage`] samples taken around the fio process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct ServerCost {
    /// Wall time of the fio process (connect + ramp + runtime).
    wall_seconds: f64,
    /// Server CPU time (user + system) in that time.
    cpu_seconds: f64,
    /// Server context switches in that time.
    context_switches: u64,
    /// Server threads alive at the end.
    threads: usize,
    /// CPUs' worth of work by anything but the server and fio in that time
    /// (machine busy time − server CPU − fio's CPU, ÷ wall time): above a
    /// few hundredths, something else ran and the run is disturbed.
    other_cpus: Option<f64>,
}

impl ServerCost {
    /// From samples before and after a fio process that ran `wall_seconds`
    /// and reported `client_cpu_percent`.
    fn between(
        before: (ProcUsage, Option<CpuTimes>),
        after: (ProcUsage, Option<CpuTimes>),
        wall_seconds: f64,
        client_cpu_percent: f64,
    ) -> ServerCost {
        let cpu_seconds = (after.0.cpu_seconds - before.0.cpu_seconds).max(0.0);
        let other_cpus = match (before.1, after.1) {
            (Some(b), Some(a)) if wall_seconds > 0.0 => {
                let client_seconds = client_cpu_percent / 100.0 * wall_seconds;
                Some(((a.busy - b.busy - cpu_seconds - client_seconds) / wall_seconds).max(0.0))
            }
            _ => None,
        };
        ServerCost {
            wall_seconds,
            cpu_seconds,
            context_switches: after.0.context_switches.saturating_sub(before.0.context_switches),
            threads: after.0.threads,
            other_cpus,
        }
    }

    /// `total` (accumulated over the whole fio process) per request, taking
    /// the measured `iops` as the rate over that whole time: the ramp and
    /// connection setup are not in fio's figures, so this is an estimate.
    fn per_request(&self, total: f64, iops: f64) -> Option<f64> {
        (self.wall_seconds > 0.0 && iops > 0.0).then(|| total / self.wall_seconds / iops)
    }
}

/// One fio run in the raw results.
#[derive(Serialize)]
struct RunRecord {
    round: u32,
    /// 0 for the first run of this round's pair, then 1, 2… for repeats.
    attempt: u32,
    /// False for runs discarded because outside load disturbed their pair.
    used: bool,
    system: String,
    workload: &'static str,
    stats: JobStats,
    server: ServerCost,
    fio: Value,
}

impl RunRecord {
    /// Whether other work on the machine used more than
    /// [`OTHER_LOAD_FLAG`] CPUs while this job ran.
    fn disturbed(&self) -> bool {
        self.server.other_cpus.is_some_and(|c| c > OTHER_LOAD_FLAG)
    }
}

/// The prefill of one export.
#[derive(Serialize)]
struct Prefill {
    system: String,
    seconds: f64,
    megabytes_per_second: f64,
}

/// One row of the summary in the raw results.
#[derive(Serialize)]
struct MedianRecord {
    figure: String,
    medians: BTreeMap<String, Option<f64>>,
    ratio: Option<f64>,
    target: Option<String>,
    pass: Option<bool>,
}

/// Everything `--json` saves.
#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    command: Vec<String>,
    machine: Machine,
    loadavg_at_end: String,
    tools: BTreeMap<&'static str, String>,
    rounds: u32,
    retries: u32,
    runtime_s: u32,
    ramp_s: u32,
    region: &'static str,
    volume_bytes: u64,
    prefill: Vec<Prefill>,
    runs: Vec<RunRecord>,
    summary: Vec<MedianRecord>,
}

/// Runs the scenario and prints its report on stdout (progress on stderr).
pub fn run(args: &Args) -> Result<()> {
    let common = &args.common;
    let machine = Machine::describe();
    if let Some(busy) = machine.cpu_busy_before.filter(|&b| b > 0.1) {
        eprintln!(
            "warning: the CPUs were {:.0} % busy just before the run: other work on this machine will skew the figures",
            busy * 100.0
        );
    }
    let command: Vec<String> = std::env::args().collect();
    let geomirror_bin = common.geomirror_binary()?;

    let mut tools = procs::tool_versions(&["fio", "qemu-nbd", "nbdinfo"])?;

    let dir = common.temp_dir()?;
    let work = dir.path();
    eprintln!("working in {}{}", work.display(), if common.keep { " (kept)" } else { "" });

    // Both servers stay up for the whole run; dropping `systems` (also on
    // an early return) kills them, before `dir` is removed.
    let geomirror = systems::start_geomirror(&geomirror_bin, work).context("start geomirror")?;
    tools.insert("geomirror", procs::tool_version(&geomirror_bin.display().to_string(), "pass --geomirror PATH")?);
    let qemu = systems::start_qemu_nbd(work).context("start qemu-nbd")?;
    let mut systems = vec![geomirror, qemu];
    for s in &systems {
        eprintln!("{} ready at {}", s.label, s.uri);
    }

    let per_job = f64::from(args.runtime + RAMP_S) + 0.3;
    let estimate = f64::from(args.rounds) * (WORKLOADS.len() * systems.len()) as f64 * per_job;
    eprintln!(
        "{} rounds × {} jobs × {} systems, {} s + {RAMP_S} s ramp each: about {:.0} s of measurement (more if pairs are repeated)",
        args.rounds,
        WORKLOADS.len(),
        systems.len(),
        args.runtime,
        estimate
    );

    let mut prefill = Vec::new();
    for system in &mut systems {
        prefill.push(prefill_export(system, work)?);
    }

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for workload in WORKLOADS {
            let job = workload.job(args.runtime);
            // One A B pair; repeated (both systems) when outside load
            // disturbed either run, at most `--retries` times.
            let measure_pair = |attempt| {
                let mut pair = Vec::new();
                for system in &mut systems {
                    let (run, server) = measure(system, &job, work)?;
                    let record = RunRecord {
                        round,
                        attempt,
                        used: true,
                        system: system.label.clone(),
                        workload: workload.key,
                        stats: run.stats,
                        server,
                        fio: run.raw,
                    };
                    eprintln!(
                        "round {round}/{}  {:<18} {:<10} {}, other load {} CPUs",
                        args.rounds,
                        workload.key,
                        system.label,
                        progress_line(workload, &record, job.direction()),
                        record.server.other_cpus.map_or_else(|| "n/a".into(), |c| format!("{c:.2}"))
                    );
                    pair.push(record);
                }
                Ok(pair)
            };
            let why = format!("other load above {OTHER_LOAD_FLAG} CPUs during this pair");
            runs.extend(crate::load::repeat_disturbed(common.retries, measure_pair, RunRecord::disturbed, |r| r.used = false, &why)?);
        }
    }

    let labels: Vec<String> = systems.iter().map(|s| s.label.clone()).collect();
    let comparison = summarise(&labels, args.rounds, &runs, |w| w.figures);
    let cost = summarise(&labels, args.rounds, &runs, |_| COST_FIGURES);
    let series = per_round_series(&labels, args.rounds, &runs);

    let checks = comparison.checks();
    let summary = comparison
        .rows
        .iter()
        .chain(&cost.rows)
        .map(|row| MedianRecord {
            figure: row.figure.clone(),
            medians: labels.iter().cloned().zip(row.values.iter().copied()).collect(),
            ratio: comparison.ratio(row),
            target: row.target.map(|t| t.to_string()),
            pass: row.target.and_then(|_| checks.iter().find(|c| c.figure == row.figure).map(|c| c.pass)),
        })
        .collect();
    let report = Report {
        benchmark: "single-site",
        command,
        machine,
        loadavg_at_end: machine::loadavg(),
        tools,
        rounds: args.rounds,
        retries: common.retries,
        runtime_s: args.runtime,
        ramp_s: RAMP_S,
        region: REGION,
        volume_bytes: VOLUME_BYTES,
        prefill,
        runs,
        summary,
    };
    print_report(&report, &comparison, &cost, &series);
    common.save_json(&report)?;

    // The last phase: copying a sparse volume (BLOCK_STATUS), as
    // `sparse-copy` runs it alone.
    println!();
    crate::sparse_copy::run(&crate::sparse_copy::Args { rounds: args.rounds, common: CommonArgs { json: None, ..common.clone() } })
}

/// Writes the first `REGION` bytes of `system`'s export once, sequentially.
fn prefill_export(system: &mut System, work: &Path) -> Result<Prefill> {
    let job = Job {
        name: format!("prefill-{}", system.label),
        rw: "write",
        block_size: "1m",
        iodepth: 8,
        size: REGION.to_string(),
        timing: Timing::Once,
        extra: Vec::new(),
    };
    let started = Instant::now();
    let (run, _) = measure(system, &job, work)?;
    let seconds = started.elapsed().as_secs_f64();
    let megabytes_per_second = run.stats.write.bw_bytes / 1e6;
    eprintln!("prefilled {REGION_TEXT} of {} in {seconds:.1} s ({megabytes_per_second:.0} MB/s)", system.label);
    Ok(Prefill { system: system.label.clone(), seconds, megabytes_per_second })
}

/// Runs `job` on `system` and samples what the server used meanwhile; if
/// the server died, that is the error.
fn measure(system: &mut System, job: &Job, work: &Path) -> Result<(fio::Run, ServerCost)> {
    system.server.check_alive()?;
    let pid = system.server.pid();
    let before = (ProcUsage::sample(pid)?, CpuTimes::sample());
    let started = Instant::now();
    let result = fio::run(job, &system.uri, work);
    let wall_seconds = started.elapsed().as_secs_f64();
    system.server.check_alive().with_context(|| format!("{} died during fio job `{}`", system.server.name(), job.name))?;
    let run = result.with_context(|| format!("measure {} with fio job `{}`", system.label, job.name))?;
    let after = (ProcUsage::sample(pid)?, CpuTimes::sample());
    let cost = ServerCost::between(before, after, wall_seconds, run.stats.client_cpu_percent);
    Ok((run, cost))
}

fn progress_line(workload: &Workload, run: &RunRecord, direction: Direction) -> String {
    workload
        .figures
        .iter()
        .chain(COST_FIGURES)
        .map(|&f| {
            let v = f.value(run, direction).map_or_else(|| "n/a".into(), |v| table::format_value(v, f.format()));
            format!("{} {v}", f.label())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value of `figure` of `workload` on `system` in each round.
fn per_round(runs: &[RunRecord], rounds: u32, workload: &Workload, figure: Figure, system: &str) -> Vec<Option<f64>> {
    let direction = workload.job(1).direction();
    (1..=rounds)
        .map(|round| {
            runs.iter()
                .find(|r| r.used && r.round == round && r.workload == workload.key && r.system == system)
                .and_then(|r| figure.value(r, direction))
        })
        .collect()
}

/// Medians over rounds of the figures `figures` picks for each workload, as
/// a comparison of the first system (geomirror) against the second (qemu-nbd).
fn summarise(labels: &[String], rounds: u32, runs: &[RunRecord], figures: impl Fn(&Workload) -> &'static [Figure]) -> Comparison {
    let rows = WORKLOADS
        .iter()
        .flat_map(|w| figures(w).iter().map(move |&f| (w, f)))
        .map(|(w, f)| Row {
            figure: w.figure_label(f),
            values: labels.iter().map(|s| median_of_present(&per_round(runs, rounds, w, f, s))).collect(),
            format: f.format(),
            target: f.target(),
        })
        .collect();
    Comparison { systems: labels.to_vec(), subject: 0, baseline: 1, rows }
}

/// Whether the run kept for that round, workload and system was disturbed.
fn disturbed(runs: &[RunRecord], round: u32, workload: &Workload, system: &str) -> bool {
    runs.iter().find(|r| r.used && r.round == round && r.workload == workload.key && r.system == system).is_some_and(RunRecord::disturbed)
}

fn per_round_series(labels: &[String], rounds: u32, runs: &[RunRecord]) -> Vec<Series> {
    let mut out = Vec::new();
    for w in WORKLOADS {
        for &f in w.figures.iter().chain(COST_FIGURES) {
            for s in labels {
                let flagged = (1..=rounds).map(|round| disturbed(runs, round, w, s)).collect();
                out.push(Series {
                    label: format!("{} — {s}", w.figure_label(f)),
                    values: per_round(runs, rounds, w, f, s),
                    flagged,
                    format: f.format(),
                });
            }
        }
    }
    out
}

/// Prints the report: header, main table, target checks, cost table and
/// per-round table.
fn print_report(report: &Report, comparison: &Comparison, cost: &Comparison, series: &[Series]) {
    let machine = &report.machine;
    machine.print_header("single-site", &report.loadavg_at_end, &report.tools, &report.command);
    let other: Vec<f64> = report.runs.iter().filter(|r| r.used).filter_map(|r| r.server.other_cpus).collect();
    if let (Some(median), Some(max)) = (crate::stats::median(&other), other.iter().copied().reduce(f64::max)) {
        println!(
            "- other load during the kept jobs (machine CPU time minus the server's and fio's): median {median:.2} CPUs, max {max:.2} CPUs"
        );
    }
    println!(
        "- method: fio nbd engine, one connection, first {REGION_TEXT} of a {} GiB export (prefilled), {} s measured after {RAMP_S} s ramp per job, \
         {} round(s), systems alternated per job (a pair disturbed by outside load is repeated up to {} time(s)), medians over rounds",
        report.volume_bytes >> 30,
        report.runtime_s,
        report.rounds,
        report.retries
    );
    println!("- clat = submit returned → completion; total lat = slat + clat (libnbd sends the request inside the submit call)\n");
    print!("{}", comparison.markdown());
    println!();
    println!("Targets (ratio geomirror/qemu-nbd):\n");
    for check in comparison.checks() {
        println!("- {check}");
    }
    println!(
        "\nServer cost per request (estimate: the server's CPU time and context switches over the whole fio process, \
         ramp included, ÷ measured IOPS; switches of threads that exited are missed):\n"
    );
    print!("{}", cost.markdown());
    println!("\nPer round:\n");
    print!("{}", table::rounds_markdown(series));
    let discarded = report.runs.iter().filter(|r| !r.used).count();
    println!(
        "\n\\* other load above {OTHER_LOAD_FLAG} CPUs during that job: something else ran; QD1 figures especially are suspect. \
         Runs discarded for outside load and repeated: {discarded}."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fio::DirStats;

    fn record(round: u32, system: &str, workload: &'static str, iops: f64, p50: f64) -> RunRecord {
        let d = DirStats { iops, bw_bytes: iops * 4096.0, clat_p50_us: Some(p50), ..DirStats::default() };
        let stats = if workload.contains("read") {
            JobStats { read: d, ..JobStats::default() }
        } else {
            JobStats { write: d, ..JobStats::default() }
        };
        let server = ServerCost { wall_seconds: 2.0, cpu_seconds: 1.0, context_switches: 4000, threads: 3, other_cpus: None };
        RunRecord { round, attempt: 0, used: true, system: system.into(), workload, stats, server, fio: Value::Null }
    }

    #[test]
    fn summary_takes_medians_per_system_from_the_right_direction() {
        let labels = vec!["geomirror".to_string(), "qemu-nbd".to_string()];
        let mut runs = Vec::new();
        for (round, (g, q)) in [(1, (900.0, 1000.0)), (2, (100.0, 1100.0)), (3, (950.0, 900.0))] {
            runs.push(record(round, "geomirror", "randread-4k-qd1", g, 50.0 + f64::from(round)));
            runs.push(record(round, "qemu-nbd", "randread-4k-qd1", q, 40.0));
        }
        // A discarded attempt must not count.
        let mut discarded = record(2, "geomirror", "randread-4k-qd1", 1.0, 1.0);
        discarded.used = false;
        runs.insert(0, discarded);
        let c = summarise(&labels, 3, &runs, |w| w.figures);
        let iops = c.rows.iter().find(|r| r.figure == "4 KiB randread QD1, IOPS").unwrap();
        assert_eq!(iops.values, vec![Some(900.0), Some(1000.0)]);
        assert_eq!(c.ratio(iops), Some(0.9));
        let p50 = c.rows.iter().find(|r| r.figure == "4 KiB randread QD1, clat p50 µs").unwrap();
        assert_eq!(p50.values, vec![Some(52.0), Some(40.0)]);
        // Workloads with no runs are "n/a", not zero.
        let seq = c.rows.iter().find(|r| r.figure == "1 MiB seq write QD8, MB/s").unwrap();
        assert_eq!(seq.values, vec![None, None]);
        let checks = c.checks();
        assert!(checks.iter().any(|k| k.figure == "4 KiB randread QD1, IOPS" && k.pass));
        assert!(checks.iter().any(|k| k.figure == "4 KiB randread QD1, clat p50 µs" && !k.pass));
        // Cost: 0.5 CPU-seconds per second at 900 IOPS ≈ 555.6 µs/request.
        let cost = summarise(&labels, 3, &runs, |_| COST_FIGURES);
        let cpu = cost.rows.iter().find(|r| r.figure == "4 KiB randread QD1, server CPU µs/request").unwrap();
        assert!((cpu.values[0].unwrap() - 0.5e6 / 900.0).abs() < 1e-6);
        assert!(cost.checks().is_empty(), "cost figures are not checked");
    }
}
