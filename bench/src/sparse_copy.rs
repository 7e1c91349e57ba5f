//! The `sparse-copy` scenario: `nbdcopy` of a mostly empty export from one
//! geomirror node and from qemu-nbd, in the same run (see the crate
//! documentation for the method). It shows whether NBD_CMD_BLOCK_STATUS
//! (`base:allocation`) lets a copy skip the holes: the bytes the geomirror
//! node read for each copy must equal the data `nbdinfo --map` reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::CommonArgs;
use crate::load::{self, Load, OTHER_LOAD_FLAG, Probe, STEAL_FLAG};
use crate::machine::{self, ReportHead};
use crate::node_status::Metrics;
use crate::procs;
use crate::stats::{median, median_of_present};
use crate::systems::{self, EXPORT, Target as System};
use crate::table::{self, Comparison, Format, Row, Series};

/// Options of `sparse-copy`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Rounds; each copies every export once, systems alternated.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rounds: u32,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Virtual size of each export.
const VOLUME_BYTES: u64 = 4 << 30;
/// Data written at the start of every [`STRIDE_BYTES`].
const RUN_BYTES: u64 = 4 << 20;
/// Distance between the starts of two data runs (10 % data).
const STRIDE_BYTES: u64 = 40 << 20;
/// Byte the data runs are filled with (not zero: zeroes could be stored as holes).
const PATTERN: u8 = 0x5a;
/// How long the fill or one copy may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(300);
/// The geomirror counter of bytes read by hosts, per volume.
const READ_BYTES_METRIC: &str = "geomirror_host_read_bytes_total";

/// Offsets of the data runs: one every [`STRIDE_BYTES`], spread over the volume.
fn data_offsets() -> Vec<u64> {
    (0..VOLUME_BYTES / STRIDE_BYTES + 1).map(|k| k * STRIDE_BYTES).filter(|o| o + RUN_BYTES <= VOLUME_BYTES).collect()
}

/// Bytes of data written to each export.
fn data_bytes() -> u64 {
    data_offsets().len() as u64 * RUN_BYTES
}

/// `nbdinfo --map --totals` of an export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
struct MapTotals {
    /// Bytes of extents without the hole flag.
    data: u64,
    /// Bytes of extents with it.
    hole: u64,
}

/// Parses `nbdinfo --map --totals` lines: `BYTES PERCENT TYPE DESCRIPTION`
/// (`432013312  10.1%   0 data`); type bit 0 is the hole flag.
fn parse_map_totals(text: &str) -> Result<MapTotals> {
    let mut totals = MapTotals::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [bytes, _, kind, ..] => bytes.parse::<u64>().ok().zip(kind.parse::<u32>().ok()),
            _ => None,
        };
        let (bytes, kind) = parsed.with_context(|| format!("unexpected `nbdinfo --map --totals` line `{line}`"))?;
        if kind & 1 == 1 {
            totals.hole += bytes;
        } else {
            totals.data += bytes;
        }
    }
    Ok(totals)
}

/// One copy.
#[derive(Clone, Debug, Serialize)]
struct CopyRun {
    round: u32,
    /// 0 for the first run of this round's pair, then 1, 2… for repeats.
    attempt: u32,
    /// False for runs discarded because outside load disturbed their pair.
    used: bool,
    system: String,
    wall_seconds: f64,
    /// Bytes the server read for hosts during the copy (geomirror only).
    server_read_bytes: Option<u64>,
    load: Load,
}

impl CopyRun {
    fn gigabytes_per_second(&self) -> f64 {
        VOLUME_BYTES as f64 / self.wall_seconds / 1e9
    }
}

/// Everything `--json` saves.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    head: ReportHead,
    rounds: u32,
    retries: u32,
    /// Virtual size of each export.
    volume_bytes: u64,
    /// Bytes written to each before measuring.
    data_bytes: u64,
    /// Each export's preparation, by system.
    exports: BTreeMap<String, Prepared>,
    /// Every copy, the discarded ones too.
    runs: Vec<CopyRun>,
}

/// One export, prepared before measuring.
#[derive(Serialize)]
struct Prepared {
    /// How long writing its data took.
    fill_seconds: f64,
    /// Its `nbdinfo --map --totals` afterwards.
    map: MapTotals,
}

/// Runs the scenario and prints its report on stdout (progress on stderr).
pub fn run(args: &Args) -> Result<()> {
    let common = &args.common;
    let machine = crate::lineup::describe_machine();
    let command: Vec<String> = std::env::args().collect();
    let geomirror_bin = common.geomirror_binary()?;

    let mut tools = procs::tool_versions(&["nbdcopy", "nbdinfo", "qemu-io", "qemu-nbd"])?;

    let dir = common.temp_dir()?;
    let work = dir.path();
    eprintln!("working in {}{}", work.display(), if common.keep { " (kept)" } else { "" });

    let geomirror = systems::start_geomirror_sized(&geomirror_bin, work, VOLUME_BYTES).context("start geomirror")?;
    tools.insert("geomirror", procs::tool_version(&geomirror_bin.display().to_string(), "pass --geomirror PATH")?);
    tools.insert("geomirror build", procs::build_info(&geomirror_bin));
    let qemu = systems::start_qemu_nbd_sized(work, VOLUME_BYTES).context("start qemu-nbd")?;
    let mut systems = vec![geomirror, qemu];
    let pids: Vec<u32> = systems.iter().map(|s| s.server.pid()).collect();

    let mut exports = BTreeMap::new();
    for system in &mut systems {
        eprintln!("{} ready at {}", system.label, system.uri);
        let fill_seconds = fill(system, work)?;
        exports.insert(system.label.clone(), Prepared { fill_seconds, map: map_totals(system, work)? });
    }

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        // One A B pair; repeated (both systems) when outside load or steal
        // disturbed either run, at most `--retries` times.
        let copy_pair = |attempt| {
            let mut pair = Vec::new();
            for system in &mut systems {
                let run = copy_once(system, work, &pids, round, attempt)?;
                eprintln!(
                    "round {round}/{}  {:<10} {:.3} s, {:.2} GB/s, server read {}, other load {:.2} CPUs, steal {:.2} CPUs",
                    args.rounds,
                    run.system,
                    run.wall_seconds,
                    run.gigabytes_per_second(),
                    run.server_read_bytes.map_or_else(|| "n/a".into(), |b| format!("{b} bytes")),
                    run.load.other_cpus.unwrap_or(f64::NAN),
                    run.load.steal_cpus.unwrap_or(f64::NAN),
                );
                pair.push(run);
            }
            Ok(pair)
        };
        let why = format!("other load above {OTHER_LOAD_FLAG} CPUs or steal above {STEAL_FLAG} CPUs");
        runs.extend(load::repeat_disturbed(common.retries, copy_pair, |r: &CopyRun| r.load.disturbed(), |r| r.used = false, &why)?);
    }

    let head = ReportHead { benchmark: "sparse-copy", command, machine, loadavg_at_end: machine::loadavg(), tools };
    let report =
        Report { head, rounds: args.rounds, retries: common.retries, volume_bytes: VOLUME_BYTES, data_bytes: data_bytes(), exports, runs };
    let labels: Vec<String> = systems.iter().map(|s| s.label.clone()).collect();
    print_report(&report, &labels);
    common.save_json(&report)
}

/// Writes the data runs into `system`'s export with one `qemu-io` process
/// over NBD; returns how long that took.
fn fill(system: &mut System, work: &Path) -> Result<f64> {
    let mut args = vec!["-f".to_string(), "raw".to_string()];
    for offset in data_offsets() {
        args.push("-c".into());
        args.push(format!("write -P {PATTERN:#x} {offset} {RUN_BYTES}"));
    }
    args.push(system.uri.clone());
    let started = Instant::now();
    let out = procs::run_to_completion("qemu-io", &args, work, &format!("fill-{}", system.label), DEADLINE)?;
    let seconds = started.elapsed().as_secs_f64();
    system.server.check_alive()?;
    let wrote = out.stdout.lines().filter(|l| l.starts_with("wrote ")).count();
    if !out.status.success() || wrote != data_offsets().len() {
        bail!(
            "qemu-io wrote {wrote} of {} runs to {} ({}); output (tail):\n{}\n{}",
            data_offsets().len(),
            system.label,
            out.status,
            procs::tail_lines(&out.stdout, 5),
            procs::tail_lines(&out.stderr, 5)
        );
    }
    eprintln!("wrote {} MiB of data to {} in {seconds:.1} s", data_bytes() >> 20, system.label);
    Ok(seconds)
}

/// `nbdinfo --map --totals` of `system`'s export.
fn map_totals(system: &System, work: &Path) -> Result<MapTotals> {
    let args = ["--map", "--totals", &system.uri].map(String::from);
    let out = procs::run_to_completion("nbdinfo", &args, work, &format!("map-{}", system.label), DEADLINE)?;
    if !out.status.success() {
        bail!("`nbdinfo --map --totals {}` failed ({}): {}", system.uri, out.status, procs::tail_lines(&out.stderr, 5));
    }
    parse_map_totals(&out.stdout).with_context(|| format!("the map of {}", system.label))
}

/// The geomirror volume's host read bytes so far (None for qemu-nbd).
fn server_read_bytes(system: &System) -> Result<Option<u64>> {
    let Some(admin) = &system.admin else { return Ok(None) };
    let metrics = Metrics::fetch(admin).with_context(|| format!("read {}'s /metrics", system.label))?;
    let bytes = metrics
        .sum(READ_BYTES_METRIC, &[("volume", EXPORT)])
        .with_context(|| format!("{}'s /metrics has no {READ_BYTES_METRIC} for volume {EXPORT}", system.label))?;
    Ok(Some(bytes as u64))
}

/// One `nbdcopy URI null:` of `system`'s export (on CPU 0 when pinned, like fio).
fn copy_once(system: &mut System, work: &Path, pids: &[u32], round: u32, attempt: u32) -> Result<CopyRun> {
    system.server.check_alive()?;
    let mut args = vec![system.uri.clone(), "null:".to_string()];
    let program = match procs::pinned_cpu("nbdcopy") {
        Some(cpu) => {
            args.splice(0..0, ["-c".to_string(), cpu.to_string(), "nbdcopy".to_string()]);
            "taskset"
        }
        None => "nbdcopy",
    };
    let read_before = server_read_bytes(system)?;
    let probe = Probe::start(pids);
    let started = Instant::now();
    let out = procs::run_to_completion(program, &args, work, &format!("nbdcopy-{}", system.label), DEADLINE)?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let load = probe.finish();
    system.server.check_alive().with_context(|| format!("{} died during nbdcopy", system.label))?;
    if !out.status.success() {
        bail!("nbdcopy from {} failed ({}): {}", system.label, out.status, procs::tail_lines(&out.stderr, 10));
    }
    let read_after = server_read_bytes(system)?;
    let server_read_bytes = read_before.zip(read_after).map(|(b, a)| a.saturating_sub(b));
    Ok(CopyRun { round, attempt, used: true, system: system.label.clone(), wall_seconds, server_read_bytes, load })
}

/// One figure of a copy.
type Figure = fn(&CopyRun) -> Option<f64>;

/// The figures of the tables: label, value, format.
const FIGURES: &[(&str, Figure, Format)] = &[
    ("wall time per copy, ms", |r| Some(r.wall_seconds * 1e3), Format::OneDecimal),
    ("throughput, GB/s of the 4 GiB virtual size", |r| Some(r.gigabytes_per_second()), Format::TwoDecimals),
    ("bytes the server read per copy", |r| r.server_read_bytes.map(|b| b as f64), Format::Integer),
];

/// The kept run of `system` in `round`.
fn kept<'a>(runs: &'a [CopyRun], round: u32, system: &str) -> Option<&'a CopyRun> {
    runs.iter().find(|r| r.used && r.round == round && r.system == system)
}

fn per_round(runs: &[CopyRun], rounds: u32, system: &str, figure: Figure) -> Vec<Option<f64>> {
    (1..=rounds).map(|round| kept(runs, round, system).and_then(figure)).collect()
}

/// Medians over rounds, geomirror (first) against qemu-nbd (second).
fn summarise(labels: &[String], rounds: u32, runs: &[CopyRun]) -> Comparison {
    let rows = FIGURES
        .iter()
        .map(|&(label, figure, format)| Row {
            figure: label.to_string(),
            values: labels.iter().map(|s| median_of_present(&per_round(runs, rounds, s, figure))).collect(),
            format,
            target: None,
        })
        .collect();
    Comparison { systems: labels.to_vec(), subject: 0, baseline: 1, rows }
}

fn print_report(report: &Report, labels: &[String]) {
    report.head.print();
    let kept: Vec<&CopyRun> = report.runs.iter().filter(|r| r.used).collect();
    let stat = |f: fn(&Load) -> Option<f64>| {
        let v: Vec<f64> = kept.iter().filter_map(|r| f(&r.load)).collect();
        let show = |x: Option<f64>| x.map_or_else(|| "n/a".into(), |x| format!("{x:.2}"));
        format!("median {} CPUs, max {} CPUs", show(median(&v)), show(v.iter().copied().reduce(f64::max)))
    };
    println!("- machine state during the kept copies: hypervisor steal {}; other load {}", stat(|l| l.steal_cpus), stat(|l| l.other_cpus));
    println!(
        "- method: a {} GiB export per system ({} MiB of data, `{PATTERN:#x}`, at the start of every {} MiB, written once with \
         qemu-io over NBD; the rest never written), then {} round(s) of `nbdcopy URI null:` (nbdcopy's defaults; no progress bar, \
         the default: this nbdcopy takes `--progress[=FD]` but not `--progress=false`), systems alternated, medians over rounds; \
         a pair with more than {OTHER_LOAD_FLAG} CPUs of other load or {STEAL_FLAG} CPUs of steal is repeated up to {} time(s)",
        VOLUME_BYTES >> 30,
        report.data_bytes >> 20,
        STRIDE_BYTES >> 20,
        report.rounds,
        report.retries,
    );
    println!(
        "- throughput: the virtual size ({VOLUME_BYTES} bytes) ÷ wall time of the nbdcopy process (connect included); \
         bytes read: the delta of geomirror's `{READ_BYTES_METRIC}{{volume=\"{EXPORT}\"}}` around each copy (qemu-nbd has no such counter)\n"
    );
    print!("{}", summarise(labels, report.rounds, &report.runs).markdown());

    println!("\nCheck, `nbdinfo --map --totals` of each export after the fill ({} bytes written):\n", report.data_bytes);
    let rows: Vec<Vec<String>> = report
        .exports
        .iter()
        .map(|(system, Prepared { map: m, .. })| {
            let pct = |b: u64| format!("{:.1} %", b as f64 * 100.0 / VOLUME_BYTES as f64);
            let bytes = |b: u64| table::format_value(b as f64, Format::Integer);
            vec![system.clone(), bytes(m.data), pct(m.data), bytes(m.hole), pct(m.hole)]
        })
        .collect();
    print!("{}", table::plain_markdown(&["export", "data bytes", "data", "hole bytes", "hole"], &rows));
    if let Some(Prepared { map, .. }) = report.exports.get(&labels[0]) {
        let reads: Vec<u64> = kept.iter().filter(|r| r.system == labels[0]).filter_map(|r| r.server_read_bytes).collect();
        let verdict = if !reads.is_empty() && reads.iter().all(|&b| b == map.data) {
            "equal to the map's data bytes in every copy: the holes were not read"
        } else {
            "NOT equal to the map's data bytes in every copy"
        };
        println!("\n{} read {reads:?} bytes per kept copy: {verdict}.", labels[0]);
    }

    println!("\nPer round:\n");
    let mut series = Vec::new();
    for &(label, figure, format) in FIGURES {
        for system in labels {
            let values = per_round(&report.runs, report.rounds, system, figure);
            if values.iter().all(Option::is_none) {
                continue; // qemu-nbd's read bytes
            }
            let flagged = (1..=report.rounds).map(|round| kept_disturbed(&report.runs, round, system)).collect();
            series.push(Series { label: format!("{label} — {system}"), values, flagged, format });
        }
    }
    print!("{}", table::rounds_markdown(&series));
    let discarded = report.runs.iter().filter(|r| !r.used).count();
    println!(
        "\n\\* other load above {OTHER_LOAD_FLAG} CPUs or steal above {STEAL_FLAG} CPUs during that copy (kept anyway). \
         Pairs discarded for outside load and repeated: {}.",
        discarded / labels.len().max(1)
    );
}

/// Whether the run kept for that round and system was disturbed.
fn kept_disturbed(runs: &[CopyRun], round: u32, system: &str) -> bool {
    kept(runs, round, system).is_some_and(|r| r.load.disturbed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_is_data_spread_over_the_volume() {
        let offsets = data_offsets();
        assert_eq!(offsets.len(), 103);
        assert_eq!(offsets.last().copied(), Some(102 * STRIDE_BYTES));
        assert!(offsets.last().unwrap() + RUN_BYTES <= VOLUME_BYTES);
        let share = data_bytes() as f64 / VOLUME_BYTES as f64;
        assert!((0.099..0.102).contains(&share), "{share}");
    }

    #[test]
    fn map_totals_are_parsed() {
        let text = " 432013312  10.1%   0 data\n3862953984  89.9%   3 hole,zero\n";
        assert_eq!(parse_map_totals(text).unwrap(), MapTotals { data: 432_013_312, hole: 3_862_953_984 });
        assert_eq!(parse_map_totals("  4096 0.1% 2 zero\n\n").unwrap(), MapTotals { data: 4096, hole: 0 });
        assert!(parse_map_totals("garbage\n").is_err());
    }

    #[test]
    fn medians_use_kept_runs_only() {
        let run = |round, system: &str, wall_seconds, used| CopyRun {
            round,
            attempt: 0,
            used,
            system: system.into(),
            wall_seconds,
            server_read_bytes: (system == "geomirror").then_some(100),
            load: Load::default(),
        };
        let runs = vec![
            run(1, "geomirror", 9.0, false),
            run(1, "geomirror", 0.2, true),
            run(1, "qemu-nbd", 0.4, true),
            run(2, "geomirror", 0.3, true),
            run(2, "qemu-nbd", 0.4, true),
        ];
        let labels = vec!["geomirror".to_string(), "qemu-nbd".to_string()];
        let c = summarise(&labels, 2, &runs);
        let wall = &c.rows[0];
        assert!((wall.values[0].unwrap() - 250.0).abs() < 1e-9);
        assert!((c.ratio(wall).unwrap() - 0.625).abs() < 1e-9);
        assert_eq!(c.rows[2].values, vec![Some(100.0), None]);
        assert_eq!(c.ratio(&c.rows[2]), None);
    }
}
