//! The `modes` scenario: what each replication mode costs at site A, per
//! RTT. One geomirror pair with three volumes, one per mode (`async`,
//! `sync-memory`, `sync`), behind one `geomirror sim`; plain qemu-nbd (the
//! local limit); QEMU's write-blocking mirror behind its own simulator with
//! the same RTT. All are written at site A through fio's nbd engine,
//! alternating systems within each round ([`crate::lineup`]). Beside them,
//! on the same machine in the same run, the latency of one fdatasync after
//! a 4 KiB write on the temp dir's filesystem, so that the mode targets can
//! be stated in this machine's figures:
//!
//! * `sync` 4 KiB QD1 p50 ≤ 1.05 × (RTT + local write p50 + fdatasync p50)
//! * `sync` QD32 IOPS ≥ 20 × its QD1 IOPS
//! * `sync-memory` 4 KiB QD1 p50 ≤ 1.05 × (RTT + local write p50)
//!
//! (latencies are fio's total latency, submit + completion, the QD1 medians
//! exact from fio's per-I/O log; the local write is qemu-nbd's 4 KiB QD1
//! p50).
//!
//! The RTT term is taken two ways. Nominal: the simulator's setting. And
//! measured, per round ([`crate::ping`]): the median round trip of a 4 KiB
//! message and a 16-byte answer between two plain processes through a
//! second `geomirror sim` with the same settings, which is what the
//! simulated link really takes (its delay, its own two extra loopback hops,
//! timer and wake-ups, and the wake-ups of the two ends); no write that
//! waits for site B crosses fewer hops. The plain-loopback round trip is
//! measured beside it, for scale.
//!
//! Each reference is measured twice per round: back to back (the next
//! write at once, as fast as it goes) and paced like the QD1 workload of a
//! mode that waits for site B, one write per RTT (fio `--thinktime`). A
//! write that arrives after an RTT of idleness pays what a back-to-back one
//! does not: the idle CPUs' wake-ups, and on a filesystem without a
//! journal the inode (its new mtime) written by most fdatasyncs. (fio
//! pauses after each write, so the paced fdatasync is one issued after
//! the pause, not right after its write as at site B.) Both limits are
//! reported; the paced one is the closer to what a write of these
//! workloads can reach here. The first set of targets printed takes every
//! term as the workload meets it (the measured round trip, the paced
//! references): the closest to the physical limit measurable here.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use geomirror_config::ReplicationMode;
use serde::Serialize;
use serde_json::Value;

use crate::CommonArgs;
use crate::fio::{self, Job, JobStats, Timing};
use crate::lineup::{self, Header, Kind, Lineup, RAMP_S, REGION_TEXT, RoundInfo, RunRecord, System, any_disturbed, med, runs_of};
use crate::load::{self, Load};
use crate::pair::{self, VolumeSpec};
use crate::ping::{self, EchoServer, RoundTrips};
use crate::qemu_mirror::{CopyMode, QemuMirror};
use crate::sim::{self, Sim};
use crate::stats::{median, median_of_present};
use crate::systems;
use crate::table::{self, Format};

/// Options of `modes`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Round-trip times of the simulated WAN, comma-separated; every system
    /// is measured at each.
    #[arg(long, default_value = "2ms,20ms,80ms", value_delimiter = ',')]
    rtt: Vec<String>,
    /// Rounds per RTT; each runs every job once per system, the order of the
    /// systems rotated every round.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Measured seconds per fio job (after a 1 s ramp that is not counted).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runtime: u32,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Size of the file the fdatasync latency is measured on.
const SYNC_FILE: &str = "64m";

/// One geomirror volume of the pair.
struct ModeVolume {
    label: &'static str,
    volume: &'static str,
    mode: ReplicationMode,
}

const MODES: [ModeVolume; 3] = [
    ModeVolume { label: "geomirror async", volume: "m-async", mode: ReplicationMode::Async },
    ModeVolume { label: "geomirror sync-memory", volume: "m-sync-memory", mode: ReplicationMode::SyncMemory },
    ModeVolume { label: "geomirror sync", volume: "m-sync", mode: ReplicationMode::Sync },
];
const LOCAL: &str = "qemu-nbd (local)";
const WRITE_BLOCKING: &str = "QEMU write-blocking";
/// Row order in the tables (and the systems' order in the first round).
const LABELS: [&str; 5] = [MODES[0].label, MODES[1].label, MODES[2].label, LOCAL, WRITE_BLOCKING];

struct Workload {
    key: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
    /// fio `--fsync=1`: an NBD FLUSH after every write.
    flush: bool,
    /// Each I/O's latency logged: the exact median (the targets' figure).
    per_io_log: bool,
}

const QD1: &str = "randwrite-4k-qd1";
const QD32: &str = "randwrite-4k-qd32";
const SEQ: &str = "write-1m-qd8";
const FLUSH: &str = "randwrite-4k-qd1-flush";

const WORKLOADS: [Workload; 4] = [
    Workload { key: QD1, rw: "randwrite", bs: "4k", iodepth: 1, flush: false, per_io_log: true },
    Workload { key: QD32, rw: "randwrite", bs: "4k", iodepth: 32, flush: false, per_io_log: false },
    Workload { key: SEQ, rw: "write", bs: "1m", iodepth: 8, flush: false, per_io_log: false },
    Workload { key: FLUSH, rw: "randwrite", bs: "4k", iodepth: 1, flush: true, per_io_log: false },
];

/// One fdatasync measurement (a round's).
#[derive(Serialize)]
struct FdatasyncRun {
    round: u32,
    /// fio's pause after each write, before its fdatasync (µs; 0: back to
    /// back).
    think_us: u64,
    /// fdatasync latency percentiles, µs.
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    stats: JobStats,
    load: Load,
    fio: Value,
}

/// Results of one RTT.
#[derive(Serialize)]
struct RttResult {
    rtt: String,
    rtt_us: f64,
    link_settings: Option<sim::Settings>,
    prefill_mb_per_s: BTreeMap<&'static str, f64>,
    /// Back to back, one per round.
    fdatasync: Vec<FdatasyncRun>,
    /// One write per RTT, one per round.
    fdatasync_paced: Vec<FdatasyncRun>,
    /// qemu-nbd's QD1 4 KiB writes, one per RTT, one per round.
    local_paced: Vec<PacedLocalRun>,
    /// The link's round trip, one per round.
    link: Vec<LinkRun>,
    runs: Vec<RunRecord>,
}

/// Round trips of a 4 KiB message and its answer (a round's), µs.
#[derive(Serialize)]
struct LinkRun {
    round: u32,
    /// Through a `geomirror sim` with the pair's settings.
    through_sim: RoundTrips,
    /// Over plain loopback.
    direct: RoundTrips,
    load: Load,
}

/// qemu-nbd's 4 KiB QD1 writes paced one per RTT (a round's).
#[derive(Serialize)]
struct PacedLocalRun {
    round: u32,
    think_us: u64,
    stats: JobStats,
    load: Load,
    fio: Value,
}

/// Which measurements a limit is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum References {
    /// The link's measured round trip and the local references paced one
    /// write per RTT: every term as the workload meets it.
    Measured,
    /// The nominal RTT; the local references paced one write per RTT,
    /// like the QD1 workload of a mode that waits for B.
    Paced,
    /// The nominal RTT; the local references with the next write at once.
    BackToBack,
}

impl References {
    const ALL: [References; 3] = [References::Measured, References::Paced, References::BackToBack];

    fn describe(self) -> &'static str {
        match self {
            References::Measured => {
                "the link's measured round trip, references paced one write per RTT (every term as the workload meets it: the \
                 closest to the physical limit measurable here)"
            }
            References::Paced => "the nominal RTT, references paced one write per RTT (as the workload runs)",
            References::BackToBack => {
                "the nominal RTT, references back to back (stricter: a write paced one per RTT does not get these on this VM)"
            }
        }
    }

    /// Appended to a summary line.
    fn tag(self) -> &'static str {
        match self {
            References::Measured => "",
            References::Paced => " (nominal RTT)",
            References::BackToBack => " (nominal RTT, back-to-back references)",
        }
    }

    /// The local references' measurement this set uses.
    fn local(self) -> References {
        match self {
            References::Measured | References::Paced => References::Paced,
            References::BackToBack => References::BackToBack,
        }
    }
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    header: Header,
    results: Vec<RttResult>,
}

/// Runs the scenario and prints its report on stdout (progress on stderr).
pub fn run(args: &Args) -> Result<()> {
    // 5 systems × 4 jobs per round, plus the 3 reference jobs and 2 round-trip
    // measurements, start-up and prefill.
    let per_rtt = f64::from(args.rounds) * 25.0 * (f64::from(args.runtime + RAMP_S) + 1.0) + 40.0;
    let (header, results) =
        lineup::run_rtts("modes", &args.common, &args.rtt, (args.rounds, args.runtime), per_rtt, |geomirror, dir, text, rtt| {
            run_rtt(args, geomirror, dir, text, rtt)
        })?;
    let report = Report { header, results };
    print_report(&report);
    args.common.save_json(&report)
}

/// The volumes of the pair: one per mode, each kept owned by A for the
/// whole RTT (release_after 1h: idle between its runs, an extent released
/// after the default 30 s would add claims to the figures).
fn volumes() -> Vec<VolumeSpec> {
    MODES.iter().map(|m| VolumeSpec { release_after: "1h", mode: m.mode, ..VolumeSpec::default_named(m.volume) }).collect()
}

fn start_systems(geomirror: &Path, dir: &Path, rtt: Duration) -> Result<Lineup> {
    let pair = pair::start(geomirror, &dir.join("geomirror"), &volumes(), rtt, None).context("start geomirror (two sites)")?;
    let pair = Rc::new(RefCell::new(pair));
    let local = systems::start_qemu_nbd(dir).context("start qemu-nbd")?;
    let wb = QemuMirror::start(geomirror, dir, "qsd-write-blocking", CopyMode::WriteBlocking, rtt)
        .context("start the write-blocking QEMU mirror")?;
    let mut systems: Vec<System> = MODES.iter().map(|m| System::geomirror(m.label, &pair, m.volume)).collect();
    systems.push(System { label: LOCAL, kind: Kind::Local(local) });
    systems.push(System { label: WRITE_BLOCKING, kind: Kind::Mirror(Box::new(wb)) });
    Ok(Lineup::new(systems))
}

fn run_rtt(args: &Args, geomirror: &Path, dir: &Path, rtt_text: &str, rtt: Duration) -> Result<RttResult> {
    eprintln!("== RTT {rtt_text}: starting geomirror (2 sites, 3 volumes + sim), qemu-nbd, qemu-storage-daemon + qemu-nbd + sim");
    let mut lineup = start_systems(geomirror, dir, rtt)?;
    let link_settings = lineup.link_settings();
    let echo = EchoServer::start()?;
    let ping_sim = Sim::start(geomirror, "sim-round-trip", &echo.addr().to_string(), rtt, None, dir)
        .context("start the simulator the link's round trip is measured through")?;
    let prefill_mb_per_s = lineup.prefill(None, dir)?;

    let think_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
    let (mut fdatasync, mut fdatasync_paced, mut local_paced, mut link) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        link.push(measure_link(args, &echo, &ping_sim, round)?);
        fdatasync.push(measure_fdatasync(args, dir, round, 0)?);
        fdatasync_paced.push(measure_fdatasync(args, dir, round, think_us)?);
        local_paced.push(measure_local_paced(args, &mut lineup, dir, round, think_us)?);
        for w in &WORKLOADS {
            let mut extra = if w.flush { vec!["--fsync=1".into()] } else { vec![] };
            if w.per_io_log {
                extra.extend(fio::per_io_latency_options(dir));
            }
            let j = lineup::timed_job(w.key, w.rw, w.bs, w.iodepth, args.runtime, extra);
            let info = RoundInfo { rtt: rtt_text, workload: w.key, round, rounds: args.rounds, retries: args.common.retries };
            runs.extend(lineup.round(&j, None, &info, dir)?);
        }
    }
    drop(lineup);
    drop(ping_sim);
    Ok(RttResult {
        rtt: rtt_text.to_string(),
        rtt_us: rtt.as_secs_f64() * 1e6,
        link_settings,
        prefill_mb_per_s,
        fdatasync,
        fdatasync_paced,
        local_paced,
        link,
        runs,
    })
}

/// The round trip of a 4 KiB message and its answer through `sim` (the
/// pair's link settings, in front of `echo`) and over plain loopback, each
/// for the run time after the ramp.
fn measure_link(args: &Args, echo: &EchoServer, sim: &Sim, round: u32) -> Result<LinkRun> {
    let (ramp, runtime) = (Duration::from_secs(RAMP_S.into()), Duration::from_secs(args.runtime.into()));
    let probe = load::Probe::start(&[sim.server.pid()]);
    let through_sim = ping::measure(&sim.listen, ramp, runtime).context("time round trips through the simulator")?;
    let direct = ping::measure(&echo.addr().to_string(), ramp, runtime).context("time round trips over loopback")?;
    let load = probe.finish();
    let one = |x: Option<f64>| table::cell(x, Format::OneDecimal);
    eprintln!(
        "round {round}/{}: round trip of a 4 KiB message and a 16-byte answer: through the simulator p50 {} µs (p10 {}, p90 {}, {} \
         exchanges), over plain loopback p50 {} µs",
        args.rounds,
        one(through_sim.p50_us),
        one(through_sim.p10_us),
        one(through_sim.p90_us),
        through_sim.count,
        one(direct.p50_us),
    );
    Ok(LinkRun { round, through_sim, direct, load })
}

/// qemu-nbd's 4 KiB QD1 random writes with `think_us` between one's
/// completion and the next (fio `--thinktime`), the exact median from the
/// per-I/O log.
fn measure_local_paced(args: &Args, lineup: &mut Lineup, dir: &Path, round: u32, think_us: u64) -> Result<PacedLocalRun> {
    let local = lineup.systems.iter_mut().find(|s| s.label == LOCAL).context("the line-up has no local system")?;
    local.check_alive()?;
    let mut extra = vec![format!("--thinktime={think_us}us")];
    extra.extend(fio::per_io_latency_options(dir));
    let j = lineup::timed_job("randwrite-4k-qd1-paced", "randwrite", "4k", 1, args.runtime, extra);
    let probe = load::Probe::start(&[]);
    let run = fio::run(&j, &local.uri_a(), dir).context("measure qemu-nbd's paced local write")?;
    let load = probe.finish();
    eprintln!(
        "round {round}/{}: qemu-nbd 4 KiB QD1 writes, one per {think_us} µs: total lat p50 {} µs (exact)",
        args.rounds,
        table::cell(run.stats.write.lat_p50_exact_us, Format::OneDecimal),
    );
    Ok(PacedLocalRun { round, think_us, stats: run.stats, load, fio: run.raw })
}

/// One fdatasync after a 4 KiB write, on a file in `dir` (the temp dir's
/// filesystem): fio's psync engine, random 4 KiB writes at QD1 over a
/// [`SYNC_FILE`] file (laid out by fio first), `--fdatasync=1`, with fio's
/// `--thinktime` of `think_us` (fio pauses after each write, before the
/// fdatasync that follows it).
fn measure_fdatasync(args: &Args, dir: &Path, round: u32, think_us: u64) -> Result<FdatasyncRun> {
    let mut extra = vec!["--fdatasync=1".to_string()];
    if think_us > 0 {
        extra.push(format!("--thinktime={think_us}us"));
    }
    let j = Job {
        name: "fdatasync".into(),
        rw: "randwrite",
        block_size: "4k",
        iodepth: 1,
        size: SYNC_FILE.into(),
        timing: Timing::TimeBased { runtime_s: args.runtime, ramp_s: RAMP_S },
        extra,
    };
    let probe = load::Probe::start(&[]);
    let run = fio::run_file(&j, &dir.join("fdatasync.dat"), dir).context("measure fdatasync")?;
    let load = probe.finish();
    let (p50_us, p99_us) = (fio::sync_latency_us(&run.raw, 50.0), fio::sync_latency_us(&run.raw, 99.0));
    eprintln!(
        "round {round}/{}: one fdatasync after a 4 KiB write, fio pausing {think_us} µs after each write: p50 {} µs, p99 {} µs",
        args.rounds,
        table::cell(p50_us, Format::OneDecimal),
        table::cell(p99_us, Format::OneDecimal)
    );
    Ok(FdatasyncRun { round, think_us, p50_us, p99_us, stats: run.stats, load, fio: run.raw })
}

// ---------------------------------------------------------------- report

type Pick = fn(&RunRecord) -> Option<f64>;

/// Total latency p50 of a run's writes, µs: the exact median where the
/// run logged every I/O, else fio's (a histogram bin's middle).
fn total_lat_p50(x: &RunRecord) -> Option<f64> {
    x.stats.write.lat_p50_exact_us.or(x.stats.write.lat_p50_us)
}

/// The figures of the per-RTT table: column, workload, value, format.
const FIGURES: [(&str, &str, Pick, Format); 9] = [
    ("4 KiB QD1 IOPS", QD1, |x| Some(x.stats.write.iops), Format::Integer),
    ("4 KiB QD1 clat p50 µs", QD1, |x| x.stats.write.clat_p50_us, Format::OneDecimal),
    ("4 KiB QD1 clat p99 µs", QD1, |x| x.stats.write.clat_p99_us, Format::OneDecimal),
    ("4 KiB QD1 total lat p50 µs (exact)", QD1, total_lat_p50, Format::OneDecimal),
    ("4 KiB QD32 IOPS", QD32, |x| Some(x.stats.write.iops), Format::Integer),
    ("1 MiB seq QD8 MB/s", SEQ, |x| Some(x.stats.write.bw_bytes / 1e6), Format::Integer),
    ("write+FLUSH QD1, writes/s", FLUSH, |x| Some(x.stats.write.iops), Format::Integer),
    ("write+FLUSH: write total lat p50 µs", FLUSH, |x| x.stats.write.lat_p50_us, Format::OneDecimal),
    ("write+FLUSH: FLUSH lat p50 µs", FLUSH, |x| fio::sync_latency_us(&x.fio, 50.0), Format::OneDecimal),
];

/// The median of `pick` over the kept runs of `system` for `workload`.
fn value(r: &RttResult, system: &str, workload: &str, pick: Pick) -> Option<f64> {
    med(&runs_of(&r.runs, system, workload), pick)
}

/// One target: what was measured against its limit.
struct Check {
    what: String,
    measured: Option<f64>,
    limit: Option<f64>,
    /// How the limit was computed.
    limit_text: String,
    unit: &'static str,
    format: Format,
    at_most: bool,
    /// False when the mode's QD1 writes completed faster than one round
    /// trip: the simulator did not delay them, so the check says nothing.
    valid: bool,
    /// Its limit is built from the local references.
    uses_references: bool,
}

impl Check {
    /// `Some(true)` when met, `None` when not measured or not valid.
    fn met(&self) -> Option<bool> {
        let (m, l) = (self.measured?, self.limit?);
        self.valid.then_some(if self.at_most { m <= l } else { m >= l })
    }

    fn verdict(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "missed",
            None if !self.valid => "not valid †",
            None => "not measured",
        }
    }

    fn row(&self) -> Vec<String> {
        let with_unit = |v: Option<f64>| table::cell(v, self.format) + self.unit;
        let op = if self.at_most { "≤" } else { "≥" };
        vec![
            self.what.clone(),
            with_unit(self.measured),
            format!("{op} {} = {}", self.limit_text, with_unit(self.limit)),
            self.verdict().to_string(),
        ]
    }
}

/// The systems whose writes wait for site B: none can complete a write in
/// less than one round trip.
const WAIT_FOR_B: [&str; 3] = [MODES[1].label, MODES[2].label, WRITE_BLOCKING];

/// Whether `system`'s 4 KiB QD1 total latency p50 is below the RTT
/// although its writes wait for site B: then the simulator did not delay
/// them as configured.
fn faster_than_the_link(r: &RttResult, system: &str) -> bool {
    WAIT_FOR_B.contains(&system) && value(r, system, QD1, total_lat_p50).is_some_and(|v| v < r.rtt_us)
}

/// The RTT term of a limit: the nominal RTT or the median over rounds of
/// the link's measured round trip p50.
fn rtt_term(r: &RttResult, refs: References) -> Option<f64> {
    match refs {
        References::Measured => median(&r.link.iter().filter_map(|l| l.through_sim.p50_us).collect::<Vec<_>>()),
        References::Paced | References::BackToBack => Some(r.rtt_us),
    }
}

/// The median over rounds of the plain-loopback round trip p50.
fn loopback_p50(r: &RttResult) -> Option<f64> {
    median(&r.link.iter().filter_map(|l| l.direct.p50_us).collect::<Vec<_>>())
}

/// The median fdatasync p50 of an RTT's rounds.
fn fdatasync_p50(r: &RttResult, refs: References) -> Option<f64> {
    let runs = match refs.local() {
        References::Measured | References::Paced => &r.fdatasync_paced,
        References::BackToBack => &r.fdatasync,
    };
    median(&runs.iter().filter_map(|f| f.p50_us).collect::<Vec<_>>())
}

/// The median over rounds of qemu-nbd's 4 KiB QD1 total latency p50.
fn local_p50(r: &RttResult, refs: References) -> Option<f64> {
    match refs.local() {
        References::Measured | References::Paced => {
            median(&r.local_paced.iter().filter_map(|x| x.stats.write.lat_p50_exact_us).collect::<Vec<_>>())
        }
        References::BackToBack => value(r, LOCAL, QD1, total_lat_p50),
    }
}

/// The targets with limits from `refs` (the QD32 target, which uses no
/// reference, only with the measured ones, the first set).
fn checks(r: &RttResult, refs: References) -> Vec<Check> {
    let lat: Pick = total_lat_p50;
    let iops: Pick = |x| Some(x.stats.write.iops);
    let local = local_p50(r, refs);
    let sync_file = fdatasync_p50(r, refs);
    let rtt = rtt_term(r, refs);
    let f = |x: Option<f64>| table::cell(x, Format::OneDecimal);
    let (sync, sync_memory) = (MODES[2].label, MODES[1].label);
    let sync_qd1 = value(r, sync, QD1, iops);
    let valid = !faster_than_the_link(r, sync);
    let valid_memory = !faster_than_the_link(r, sync_memory);
    let mut checks = vec![
        Check {
            what: "sync: 4 KiB QD1 total lat p50".into(),
            measured: value(r, sync, QD1, lat),
            limit: rtt.zip(local).zip(sync_file).map(|((t, l), s)| 1.05 * (t + l + s)),
            limit_text: format!("1.05 × ({} + {} + {})", f(rtt), f(local), f(sync_file)),
            unit: " µs",
            format: Format::OneDecimal,
            at_most: true,
            valid,
            uses_references: true,
        },
        Check {
            what: "sync: 4 KiB QD32 IOPS".into(),
            measured: value(r, sync, QD32, iops),
            limit: sync_qd1.map(|q| 20.0 * q),
            limit_text: format!("20 × {}", table::cell(sync_qd1, Format::Integer)),
            unit: "",
            format: Format::Integer,
            at_most: false,
            valid,
            uses_references: false,
        },
        Check {
            what: "sync-memory: 4 KiB QD1 total lat p50".into(),
            measured: value(r, sync_memory, QD1, lat),
            limit: rtt.zip(local).map(|(t, l)| 1.05 * (t + l)),
            limit_text: format!("1.05 × ({} + {})", f(rtt), f(local)),
            unit: " µs",
            format: Format::OneDecimal,
            at_most: true,
            valid: valid_memory,
            uses_references: true,
        },
    ];
    if refs != References::Measured {
        checks.retain(|c| c.uses_references);
    }
    checks
}

fn print_report(report: &Report) {
    report.header.print();
    println!();
    let mut summary = Vec::new();
    for r in &report.results {
        println!("## RTT {}\n", r.rtt);
        let mut rows = Vec::new();
        for label in LABELS {
            let mut row = vec![label.to_string() + if faster_than_the_link(r, label) { " †" } else { "" }];
            row.extend(FIGURES.iter().map(|&(_, workload, pick, format)| {
                let runs = runs_of(&r.runs, label, workload);
                let v = med(&runs, pick);
                table::cell(v, format) + if any_disturbed(&runs) && v.is_some() { " *" } else { "" }
            }));
            let geomirror = MODES.iter().any(|m| m.label == label);
            row.push(if geomirror { lineup::claims(&r.runs, label).to_string() } else { "—".into() });
            rows.push(row);
        }
        let mut header = vec!["system"];
        header.extend(FIGURES.iter().map(|f| f.0));
        header.push("claims during the runs");
        print!("{}", table::plain_markdown(&header, &rows));

        let local_clat = value(r, LOCAL, QD1, |x| x.stats.write.clat_p50_us);
        let p99 = |runs: &[FdatasyncRun]| median(&runs.iter().filter_map(|f| f.p99_us).collect::<Vec<_>>());
        let steal: Vec<f64> = r.fdatasync.iter().chain(&r.fdatasync_paced).filter_map(|f| f.load.steal_cpus).collect();
        let one = |x: Option<f64>| table::cell(x, Format::OneDecimal);
        println!(
            "\nReferences on this machine in this run (medians over {} round(s), {} s each; steal meanwhile median {} CPUs):\n\n\
             | reference | back to back | paced, one per RTT ({} µs between) |\n|---|---|---|\n\
             | local write: qemu-nbd 4 KiB randwrite QD1, total lat p50 (exact) µs | {} (clat {}) | {} |\n\
             | one fdatasync after a 4 KiB write on the temp dir's filesystem, p50 µs | {} (p99 {}) | {} (p99 {}) |\n\n\
             The fdatasync: fio psync, --fdatasync=1, random 4 KiB writes over a {SYNC_FILE} file. Paced: fio --thinktime (fio pauses \
             after each write, before its fdatasync), the pause a \
             QD1 writer of a mode that waits for site B leaves between writes.\n\n\
             The link's round trip (a 4 KiB message one way, a 16-byte answer back, two plain processes over TCP, back to back): \
             through a second `geomirror sim` with the same settings p50 {} µs (p10 {}, p90 {}; the RTT term of the first targets); \
             over plain loopback p50 {} µs.",
            r.fdatasync.len(),
            report.header.runtime_s,
            table::cell(median(&steal), Format::TwoDecimals),
            table::cell(Some(r.rtt_us), Format::Integer),
            one(local_p50(r, References::BackToBack)),
            one(local_clat),
            one(local_p50(r, References::Paced)),
            one(fdatasync_p50(r, References::BackToBack)),
            one(p99(&r.fdatasync)),
            one(fdatasync_p50(r, References::Paced)),
            one(p99(&r.fdatasync_paced)),
            one(rtt_term(r, References::Measured)),
            one(median_of_present(&r.link.iter().map(|l| l.through_sim.p10_us).collect::<Vec<_>>())),
            one(median_of_present(&r.link.iter().map(|l| l.through_sim.p90_us).collect::<Vec<_>>())),
            one(loopback_p50(r)),
        );
        println!(
            "\nHow: geomirror: two nodes with three 1 GiB volumes (one per mode, 1 MiB extents, predict_extents 8, release_after 1h so the \
             prefilled region stays owned by A) and one `geomirror sim` ({}, bandwidth unlimited) between them. QEMU write-blocking: \
             qemu-storage-daemon at A exporting a raw file with a blockdev-mirror job (sync none, copy-mode write-blocking) to site B's \
             qemu-nbd through its own simulator with the same settings. qemu-nbd (local): one qemu-nbd at A on a raw file, no \
             replication. Each export's first {REGION_TEXT} was written once at A (1 MiB QD8), then every system was let catch up. fio's nbd \
             engine at A, one connection, over those {REGION_TEXT}, {} s after a {RAMP_S} s ramp, {} round(s) with the order of systems \
             rotated each round, medians over rounds; after every run the benchmark waited (outside the measurement) until site B held \
             everything. write+FLUSH: 4 KiB randwrite QD1 with fio's --fsync=1, an NBD FLUSH after every write (writes/s counts write+FLUSH \
             pairs). clat: fio's completion latency; total lat: submit + completion, what an application waits; the targets use total \
             latency, the 4 KiB QD1 p50 exact (the median of fio's per-I/O log; fio's own percentiles are histogram bins, 32.8 µs wide \
             between 2.1 and 4.2 ms). Claims: claim round trips at A during the measured runs (0: every write went to an owned extent). {}\n",
            lineup::link_delay(r.link_settings.as_ref()),
            report.header.runtime_s,
            report.header.rounds,
            lineup::machine_state(&r.runs),
        );
        if LABELS.iter().any(|l| faster_than_the_link(r, l)) {
            println!(
                "**†: not valid at this RTT.** These systems wait for site B on every write, yet their 4 KiB QD1 total latency p50 is below \
                 the {} µs round trip: the simulator did not delay their traffic as configured, so their figures (and the targets that use \
                 them) say nothing about a {} WAN. (`geomirror sim` aims each delivery early by its measured wake-up lateness, up to 2 ms; \
                 once that lead exceeds the one-way delay, e.g. after a heavy run, no delivery waits any more and the lead is never measured \
                 down again.)\n",
                table::cell(Some(r.rtt_us), Format::Integer),
                r.rtt
            );
        }
        for refs in References::ALL {
            println!("### Targets at RTT {}, {}\n", r.rtt, refs.describe());
            let checks = checks(r, refs);
            print!(
                "{}",
                table::plain_markdown(&["target", "measured", "limit", "verdict"], &checks.iter().map(Check::row).collect::<Vec<_>>())
            );
            println!();
            let tag = refs.tag();
            summary.extend(
                checks.iter().map(|c| format!("{} RTT {}: {}{tag} = {}", c.verdict(), r.rtt, c.what, c.row()[1..3].join(", limit "))),
            );
        }
    }
    print_modes(report);
    println!();
    table::print_targets(&summary);
}

/// What each mode costs and guarantees, with its measured QD1 latency.
fn print_modes(report: &Report) {
    println!("## What each mode costs and guarantees\n");
    let texts: [(&str, &str, &str, &str); 3] = [
        ("written here (page cache)", "a local write", "durable here", "the writes not yet sent to B are lost if site A dies"),
        (
            "durable here (a grouped fdatasync while the copy travels) and received in B's memory",
            "RTT (the local write and fdatasync overlap the round trip)",
            "durable at both sites",
            "nothing, unless both sites crash within ~50 ms (B destages in groups of up to 50 ms)",
        ),
        (
            "durable at both sites",
            "RTT + B's write and fdatasync (the local ones overlap the round trip)",
            "durable at both sites",
            "nothing",
        ),
    ];
    let mut header = vec!["mode", "a write is acknowledged once", "a write costs about", "a FLUSH waits until", "lost on a site loss"];
    let columns: Vec<String> = report.results.iter().map(|r| format!("QD1 total lat p50 at {} µs", r.rtt)).collect();
    header.extend(columns.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = MODES
        .iter()
        .zip(texts)
        .map(|(m, (acked, cost, flush, lost))| {
            let mut row = vec![format!("`{}`", m.mode.as_str()), acked.into(), cost.into(), flush.into(), lost.into()];
            row.extend(report.results.iter().map(|r| table::cell(value(r, m.label, QD1, total_lat_p50), Format::OneDecimal)));
            row
        })
        .collect();
    print!("{}", table::plain_markdown(&header, &rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_volume_per_mode_within_the_ownership_limit() {
        let vols = volumes();
        let modes: Vec<ReplicationMode> = vols.iter().map(|v| v.mode).collect();
        assert_eq!(modes, [ReplicationMode::Async, ReplicationMode::SyncMemory, ReplicationMode::Sync]);
        for v in &vols {
            assert!(lineup::REGION_BYTES <= v.size_bytes);
            assert!(lineup::REGION_BYTES.div_ceil(v.extent_bytes) <= u64::from(v.max_owned_extents), "no claim round trip is measured");
        }
        assert_eq!(LABELS.len(), 5);
    }

    fn record(system: &'static str, workload: &'static str, iops: f64, lat_p50_us: f64) -> RunRecord {
        let mut stats = JobStats::default();
        stats.write.iops = iops;
        stats.write.lat_p50_us = Some(lat_p50_us);
        RunRecord {
            rtt: "20ms".into(),
            system,
            workload,
            round: 1,
            attempt: 0,
            used: true,
            stats,
            load: Load::default(),
            settle_seconds: None,
            claim_round_trips: None,
            system_cpus: 0.0,
            site_a_cpus: 0.0,
            fio: Value::Null,
        }
    }

    #[test]
    fn targets_follow_the_local_figures_of_each_reference() {
        let sync_run = |think_us: u64, p50_ns: u64| {
            let raw: Value =
                serde_json::from_str(&format!(r#"{{"jobs":[{{"sync":{{"lat_ns":{{"percentile":{{"50.000000":{p50_ns}}}}}}}}}]}}"#))
                    .unwrap();
            FdatasyncRun {
                round: 1,
                think_us,
                p50_us: fio::sync_latency_us(&raw, 50.0),
                p99_us: None,
                stats: JobStats::default(),
                load: Load::default(),
                fio: raw,
            }
        };
        let mut local_paced = JobStats::default();
        local_paced.write.lat_p50_exact_us = Some(150.0);
        let mut sync_qd1 = record(MODES[2].label, QD1, 48.0, 21_000.0);
        sync_qd1.stats.write.lat_p50_exact_us = Some(21_300.0);
        let r = RttResult {
            rtt: "20ms".into(),
            rtt_us: 20_000.0,
            link_settings: None,
            prefill_mb_per_s: BTreeMap::new(),
            fdatasync: vec![sync_run(0, 200_000)],
            fdatasync_paced: vec![sync_run(20_000, 300_000)],
            local_paced: vec![PacedLocalRun { round: 1, think_us: 20_000, stats: local_paced, load: Load::default(), fio: Value::Null }],
            link: [20_040.0, 20_080.0, 20_060.0]
                .into_iter()
                .enumerate()
                .map(|(i, p50)| LinkRun {
                    round: u32::try_from(i).unwrap() + 1,
                    through_sim: RoundTrips { count: 900, p10_us: Some(p50 - 30.0), p50_us: Some(p50), p90_us: Some(p50 + 90.0) },
                    direct: RoundTrips { count: 9_000, p10_us: None, p50_us: Some(35.0), p90_us: None },
                    load: Load::default(),
                })
                .collect(),
            runs: vec![
                record(LOCAL, QD1, 20_000.0, 50.0),
                sync_qd1,
                record(MODES[2].label, QD32, 900.0, 0.0),
                record(MODES[1].label, QD1, 49.0, 21_100.0),
            ],
        };
        // Measured: the round trip's median over rounds 20,060, then the
        // paced references, local 150 (exact), fdatasync 300.
        let c = checks(&r, References::Measured);
        assert_eq!(c[0].measured, Some(21_300.0), "the exact median, not fio's bin");
        assert_eq!(c[0].limit, Some(1.05 * 20_510.0));
        assert_eq!(c[0].met(), Some(true), "21,300 ≤ 21,535.5");
        assert_eq!(c[0].row()[2], "≤ 1.05 × (20,060.0 + 150.0 + 300.0) = 21,535.5 µs");
        assert_eq!(c[1].limit, Some(960.0));
        assert_eq!(c[1].row(), ["sync: 4 KiB QD32 IOPS", "900", "≥ 20 × 48 = 960", "missed"]);
        assert_eq!(c[2].limit, Some(1.05 * 20_210.0));
        assert_eq!(c[2].met(), Some(true), "21,100 ≤ 21,220.5");
        assert_eq!(loopback_p50(&r), Some(35.0));
        // Paced: the nominal RTT; no QD32 target (it uses no reference).
        let c = checks(&r, References::Paced);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].limit, Some(1.05 * 20_450.0));
        assert_eq!(c[0].met(), Some(true), "21,300 ≤ 21,472.5");
        assert_eq!(c[1].limit, Some(1.05 * 20_150.0));
        assert_eq!(c[1].met(), Some(true), "21,100 ≤ 21,157.5");
        assert_eq!(c[0].row()[2], "≤ 1.05 × (20,000.0 + 150.0 + 300.0) = 21,472.5 µs");
        // No round trip measured: the first set has no limit.
        let unmeasured = RttResult { link: vec![], ..r };
        assert!(checks(&unmeasured, References::Measured).iter().filter(|c| c.uses_references).all(|c| c.met().is_none()));
        let r = unmeasured;
        // Back to back: local 50 (fio's), fdatasync 200; no QD32 target.
        let c = checks(&r, References::BackToBack);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].limit, Some(1.05 * 20_250.0));
        assert_eq!(c[0].met(), Some(false), "21,300 > 21,262.5");
        assert_eq!(c[1].limit, Some(1.05 * 20_050.0));
        assert_eq!(c[1].met(), Some(false), "21,100 > 21,052.5");
        // Writes that wait for B finishing within less than the RTT: the
        // simulator did not delay them; no verdict.
        let r = RttResult { rtt_us: 30_000.0, ..r };
        assert!(faster_than_the_link(&r, MODES[2].label) && !faster_than_the_link(&r, LOCAL));
        for refs in References::ALL {
            assert!(checks(&r, refs).iter().all(|c| c.met().is_none() && c.verdict() == "not valid †"));
        }
    }
}
