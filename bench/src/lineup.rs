//! A line-up of systems under test written at site A through fio's nbd
//! engine, measured one after the other (used by [`crate::side_by_side`]
//! and [`crate::modes`]): each round runs a job once on every system, the
//! order rotated every round (A B C, B C A, …) so that all see the same
//! machine state as closely as possible. Around every run the other load
//! and hypervisor steal are measured ([`crate::load`]) and a disturbed QD1
//! run is repeated; after every run the benchmark waits, outside the
//! measurement, until site B holds everything written at A.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::CommonArgs;
use crate::fio::{self, Job, JobStats, Timing};
use crate::load::{self, Load, OTHER_LOAD_FLAG, STEAL_FLAG};
use crate::machine::Machine;
use crate::pair::Pair;
use crate::procs;
use crate::qemu_mirror::QemuMirror;
use crate::sim;
use crate::stats::{median, median_of_present};
use crate::systems::{self, EXPORT};
use crate::table::{self, Format};

/// Longest wait for a replica to catch up between runs.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Region of each export every job touches, from offset 0 (fio `--size`),
/// written once at A before the measurements ([`Lineup::prefill`]).
pub const REGION: &str = "256m";
/// [`REGION`] in bytes.
pub const REGION_BYTES: u64 = 256 << 20;
/// [`REGION`] for people.
pub const REGION_TEXT: &str = "256 MiB";
/// Seconds of warm-up before each measured job (fio `--ramp_time`).
pub const RAMP_S: u32 = 1;

/// A measured job over [`REGION`]: `runtime_s` seconds after [`RAMP_S`].
pub fn timed_job(key: &str, rw: &'static str, block_size: &'static str, iodepth: u32, runtime_s: u32, extra: Vec<String>) -> Job {
    Job { name: key.into(), rw, block_size, iodepth, size: REGION.into(), timing: Timing::TimeBased { runtime_s, ramp_s: RAMP_S }, extra }
}

/// The part of a line-up scenario's report every such scenario has.
#[derive(Serialize)]
pub struct Header {
    /// The scenario's name.
    pub benchmark: &'static str,
    /// This program's command line.
    pub command: Vec<String>,
    /// The machine at the start.
    pub machine: Machine,
    /// /proc/loadavg at the end.
    pub loadavg_at_end: String,
    /// Versions of the tools and the geomirror build.
    pub tools: BTreeMap<&'static str, String>,
    /// Rounds per RTT.
    pub rounds: u32,
    /// Measured seconds per job.
    pub runtime_s: u32,
    /// Warm-up seconds before each job.
    pub ramp_s: u32,
    /// `--pin`.
    pub pinned: bool,
    /// Wall time of the whole scenario.
    pub seconds_total: f64,
}

impl Header {
    /// Prints the report's header (machine, tools, command, total time).
    pub fn print(&self) {
        self.machine.print_header(self.benchmark, &self.loadavg_at_end, &self.tools, &self.command);
        println!("- total time: {:.0} s", self.seconds_total);
    }
}

/// Describes the machine, checks the tools, creates the temp dir, then
/// runs `per_rtt(geomirror binary, dir, rtt as given, rtt)` for every RTT
/// of `rtt_list`, each in its own directory; `(rounds, runtime_s)` are
/// recorded in the header, `seconds_per_rtt` is the estimate printed at the
/// start.
pub fn run_rtts<R>(
    benchmark: &'static str,
    common: &CommonArgs,
    rtt_list: &[String],
    (rounds, runtime_s): (u32, u32),
    seconds_per_rtt: f64,
    mut per_rtt: impl FnMut(&Path, &Path, &str, Duration) -> Result<R>,
) -> Result<(Header, Vec<R>)> {
    let started = Instant::now();
    let rtts = sim::parse_rtts(rtt_list)?;
    let machine = describe_machine();
    let geomirror_bin = common.geomirror_binary()?;
    let tools = tools(&geomirror_bin)?;
    let dir = common.temp_dir()?;
    let work = dir.path();
    eprintln!("working in {}{}", work.display(), if common.keep { " (kept)" } else { "" });
    eprintln!("{} RTT(s) × about {seconds_per_rtt:.0} s each", rtts.len());
    let mut results = Vec::new();
    for (text, rtt) in &rtts {
        let rtt_dir = work.join(format!("rtt-{text}"));
        std::fs::create_dir_all(&rtt_dir)?;
        results.push(per_rtt(&geomirror_bin, &rtt_dir, text, *rtt).with_context(|| format!("at RTT {text}"))?);
    }
    let header = Header {
        benchmark,
        command: std::env::args().collect(),
        machine,
        loadavg_at_end: crate::machine::loadavg(),
        tools,
        rounds,
        runtime_s,
        ramp_s: RAMP_S,
        pinned: common.pin,
        seconds_total: started.elapsed().as_secs_f64(),
    };
    Ok((header, results))
}

/// What a system is.
pub enum Kind {
    /// One volume of a two-site geomirror pair (several systems may share
    /// one pair, each on its own volume).
    Geomirror {
        /// The pair.
        pair: Rc<RefCell<Pair>>,
        /// The volume (export) this system writes.
        volume: &'static str,
    },
    /// A local server, no replication.
    Local(systems::Target),
    /// A QEMU mirror.
    Mirror(Box<QemuMirror>),
}

/// A system under test.
pub struct System {
    /// Its name in the tables.
    pub label: &'static str,
    /// What it is.
    pub kind: Kind,
}

impl System {
    /// The volume `volume` of `pair`.
    pub fn geomirror(label: &'static str, pair: &Rc<RefCell<Pair>>, volume: &'static str) -> System {
        System { label, kind: Kind::Geomirror { pair: Rc::clone(pair), volume } }
    }

    /// Site A's export, where hosts write.
    pub fn uri_a(&self) -> String {
        match &self.kind {
            Kind::Geomirror { pair, volume } => pair.borrow().a.uri(volume),
            Kind::Local(t) => t.uri.clone(),
            Kind::Mirror(m) => m.uri_a.clone(),
        }
    }

    /// NBD address of site A and of the replica at site B (the export is
    /// [`EXPORT`]).
    pub fn probe_addresses(&self) -> Option<(String, String)> {
        match &self.kind {
            Kind::Geomirror { pair, .. } => {
                let p = pair.borrow();
                Some((p.a.nbd.clone(), p.b.nbd.clone()))
            }
            Kind::Local(_) => None,
            Kind::Mirror(m) => Some((m.nbd_a.clone(), m.nbd_b.clone())),
        }
    }

    /// Site B's export, where hosts at B may write (geomirror's site B;
    /// the local server takes B's writes too); `None` for the QEMU mirrors,
    /// whose site B holds a replica that only the mirror job writes.
    pub fn uri_b(&self) -> Option<String> {
        match &self.kind {
            Kind::Geomirror { pair, volume } => Some(pair.borrow().b.uri(volume)),
            Kind::Local(t) => Some(t.uri.clone()),
            Kind::Mirror(_) => None,
        }
    }

    /// Every process of the system, site A's server first.
    pub fn pids(&self) -> Vec<u32> {
        match &self.kind {
            Kind::Geomirror { pair, .. } => pair.borrow().pids(),
            Kind::Local(t) => vec![t.server.pid()],
            Kind::Mirror(m) => m.pids(),
        }
    }

    /// Fails with the log tail of any of its processes that exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match &mut self.kind {
            Kind::Geomirror { pair, .. } => pair.borrow_mut().check_alive(),
            Kind::Local(t) => t.server.check_alive(),
            Kind::Mirror(m) => {
                m.qsd.check_alive()?;
                m.qnbd_b.check_alive()?;
                m.sim.server.check_alive()
            }
        }
    }

    /// Waits until site B holds everything written at A (geomirror: A's
    /// not_durable_at_peer_bytes of the volume is 0; QEMU: the job's offset
    /// reached its len); returns how long that took, or `None` for the
    /// local system.
    pub fn settle(&mut self) -> Result<Option<Duration>> {
        match &mut self.kind {
            Kind::Geomirror { pair, volume } => Ok(Some(pair.borrow().a.wait_durable(volume, SETTLE_TIMEOUT)?)),
            Kind::Local(_) => Ok(None),
            Kind::Mirror(m) => Ok(Some(m.wait_in_sync(SETTLE_TIMEOUT)?)),
        }
    }

    /// geomirror: claim round trips of the volume at A so far.
    fn claim_round_trips(&self) -> Result<Option<u64>> {
        match &self.kind {
            Kind::Geomirror { pair, volume } => Ok(Some(pair.borrow().a.status()?.replication(volume)?.claim_round_trips)),
            _ => Ok(None),
        }
    }
}

/// One fio run in the raw results.
#[derive(Serialize)]
pub struct RunRecord {
    /// The RTT of the simulators.
    pub rtt: String,
    /// The system's label.
    pub system: &'static str,
    /// The workload's key.
    pub workload: &'static str,
    /// 1-based.
    pub round: u32,
    /// 0 for the first attempt.
    pub attempt: u32,
    /// Whether this attempt is the one kept (the others were disturbed).
    pub used: bool,
    /// fio's figures.
    pub stats: JobStats,
    /// The machine around the run.
    pub load: Load,
    /// Time until site B held everything after this run (not part of the run).
    pub settle_seconds: Option<f64>,
    /// geomirror: claim round trips at A during the run.
    pub claim_round_trips: Option<u64>,
    /// CPUs' worth used by this system's processes (both sites and its
    /// simulator) during the run.
    pub system_cpus: f64,
    /// CPUs' worth used by site A's server alone (geomirror's site A,
    /// qemu-nbd, qemu-storage-daemon).
    pub site_a_cpus: f64,
    /// fio's JSON output.
    pub fio: Value,
}

/// Where a round's runs belong, for the records and progress lines.
pub struct RoundInfo<'a> {
    /// The RTT, as given.
    pub rtt: &'a str,
    /// The workload's key.
    pub workload: &'static str,
    /// This round, 1-based.
    pub round: u32,
    /// Rounds in all.
    pub rounds: u32,
    /// `--retries`.
    pub retries: u32,
}

/// The systems under test of one RTT, and where each one's processes are
/// in the list the load probe samples.
pub struct Lineup {
    /// The systems, in their first round's order.
    pub systems: Vec<System>,
    all_pids: Vec<u32>,
    ranges: Vec<Range<usize>>,
}

impl Lineup {
    /// A line-up of `systems`.
    pub fn new(systems: Vec<System>) -> Lineup {
        let mut all_pids = Vec::new();
        let mut ranges = Vec::new();
        for s in &systems {
            let pids = s.pids();
            ranges.push(all_pids.len()..all_pids.len() + pids.len());
            all_pids.extend(pids);
        }
        Lineup { systems, all_pids, ranges }
    }

    /// The link settings of the first geomirror pair's simulator (the
    /// other simulators get the same).
    pub fn link_settings(&self) -> Option<sim::Settings> {
        self.systems.iter().find_map(|s| match &s.kind {
            Kind::Geomirror { pair, .. } => pair.borrow().sim.status().ok().map(|st| st.settings),
            _ => None,
        })
    }

    /// Writes [`REGION`] of every system's export at A once (1 MiB
    /// sequential, QD8) and, with `b_offset`, as much from that offset at B
    /// where B takes writes (geomirror: B owns it from then on); then waits
    /// until site B caught up. Returns the MB/s at A per system.
    pub fn prefill(&mut self, b_offset: Option<u64>, dir: &Path) -> Result<BTreeMap<&'static str, f64>> {
        let mut out = BTreeMap::new();
        for s in &mut self.systems {
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
            if let (Some(offset), Some(uri_b)) = (b_offset, s.uri_b()) {
                let j = Job { name: "prefill-b".into(), extra: vec![format!("--offset={offset}")], ..j.clone() };
                fio::run(&j, &uri_b, dir)?;
            }
            let settle = s.settle()?;
            eprintln!(
                "prefilled {REGION_TEXT} of {} at {:.0} MB/s{}",
                s.label,
                run.stats.write.bw_bytes / 1e6,
                settle.map_or(String::new(), |d| format!(", site B caught up {:.2} s later", d.as_secs_f64()))
            );
            out.insert(s.label, run.stats.write.bw_bytes / 1e6);
        }
        Ok(out)
    }

    /// Runs `job` once on every system, in the order of round `info.round`
    /// (rotated by one each round). With `both_sites_offset`, at both sites
    /// at once (B's job at that offset of B's export; systems whose site B
    /// takes no writes are skipped). A QD1 run with other load or steal
    /// above the flags is repeated up to `info.retries` times.
    pub fn round(&mut self, job: &Job, both_sites_offset: Option<u64>, info: &RoundInfo<'_>, dir: &Path) -> Result<Vec<RunRecord>> {
        let mut runs = Vec::new();
        let n = self.systems.len();
        for k in 0..n {
            let index = (k + info.round as usize - 1) % n;
            let s = &mut self.systems[index];
            let uri_b = s.uri_b();
            if both_sites_offset.is_some() && uri_b.is_none() {
                continue;
            }
            for attempt in 0..=info.retries {
                s.check_alive()?;
                let claims_before = s.claim_round_trips()?;
                let probe = load::Probe::start(&self.all_pids);
                let run = match (both_sites_offset, uri_b.as_deref()) {
                    (Some(offset), Some(uri_b)) => fio::run_two_sites(job, &s.uri_a(), uri_b, offset, dir),
                    _ => fio::run(job, &s.uri_a(), dir),
                }
                .with_context(|| format!("{} on {}", info.workload, s.label))?;
                let load = probe.finish();
                let claim_round_trips = match (s.claim_round_trips()?, claims_before) {
                    (Some(after), Some(before)) => Some(after.saturating_sub(before)),
                    _ => None,
                };
                let settle_seconds = s.settle()?.map(|d| d.as_secs_f64());
                let system_cpus = load.cpus_per_process.get(self.ranges[index].clone()).map_or(0.0, |c| c.iter().sum());
                let site_a_cpus = load.cpus_per_process.get(self.ranges[index].start).copied().unwrap_or(0.0);
                let d = &run.stats.write;
                eprintln!(
                    "rtt {} round {}/{} {:<17} {:<19} IOPS {:.0}, {:.0} MB/s, clat p50 {} µs, lat p50 {} µs{}{}, other load {}, steal {}",
                    info.rtt,
                    info.round,
                    info.rounds,
                    info.workload,
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
                let retry = job.iodepth == 1 && load.disturbed() && attempt < info.retries;
                runs.push(RunRecord {
                    rtt: info.rtt.to_string(),
                    system: s.label,
                    workload: info.workload,
                    round: info.round,
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
        Ok(runs)
    }
}

/// The machine, described, with a warning on stderr when it was busy.
pub fn describe_machine() -> Machine {
    let machine = Machine::describe();
    if let Some(busy) = machine.cpu_busy_before.filter(|&b| b > 0.1) {
        eprintln!(
            "warning: the CPUs were {:.0} % busy just before the run: other work on this machine will skew the figures",
            busy * 100.0
        );
    }
    machine
}

/// Versions of the tools a line-up with QEMU mirrors needs (failing with
/// how to install one that is missing), and the geomirror build.
pub fn tools(geomirror_bin: &Path) -> Result<BTreeMap<&'static str, String>> {
    let mut tools = procs::tool_versions(&["fio", "qemu-nbd", "qemu-storage-daemon", "nbdinfo"])?;
    tools.insert("geomirror", procs::tool_version(&geomirror_bin.display().to_string(), "pass --geomirror PATH")?);
    tools.insert("geomirror build", procs::build_info(geomirror_bin));
    Ok(tools)
}

/// The kept runs of `system` for `workload`.
pub fn runs_of<'a>(runs: &'a [RunRecord], system: &str, workload: &str) -> Vec<&'a RunRecord> {
    runs.iter().filter(|x| x.used && x.system == system && x.workload == workload).collect()
}

/// The median of `f` over `runs` (runs without a value left out).
pub fn med(runs: &[&RunRecord], f: impl Fn(&RunRecord) -> Option<f64>) -> Option<f64> {
    median_of_present(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
}

/// Whether any of `runs` was kept although disturbed.
pub fn any_disturbed(runs: &[&RunRecord]) -> bool {
    runs.iter().any(|x| x.load.disturbed())
}

/// The machine's state around `runs`, for the notes under a table: other
/// load and hypervisor steal (median and max over the kept runs) and how
/// many runs were repeated.
pub fn machine_state(runs: &[RunRecord]) -> String {
    let other: Vec<f64> = runs.iter().filter(|x| x.used).filter_map(|x| x.load.other_cpus).collect();
    let steal: Vec<f64> = runs.iter().filter(|x| x.used).filter_map(|x| x.load.steal_cpus).collect();
    let repeated = runs.iter().filter(|x| !x.used).count();
    let f = |x: Option<f64>| x.map_or_else(|| "n/a".into(), |x| format!("{x:.2}"));
    let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
    format!(
        "Other load (CPU of user-space processes not under test): median {} CPUs, max {} CPUs; hypervisor steal: median {} CPUs, max {} \
         CPUs (QD1 latency follows steal on this VM). A QD1 run with more than {OTHER_LOAD_FLAG} CPUs of other load or {STEAL_FLAG} CPUs \
         of steal was repeated (at most --retries times; {repeated} repeated); `*`: a disturbed run was kept.",
        f(median(&other)),
        f(max(&other)),
        f(median(&steal)),
        f(max(&steal)),
    )
}

/// The simulator's one-way delays, "10.0 + 10.0 ms one-way".
pub fn link_delay(settings: Option<&sim::Settings>) -> String {
    settings.map_or_else(
        || "the configured".into(),
        |s| format!("{:.1} + {:.1} ms one-way", s.delay_ab_us as f64 / 1e3, s.delay_ba_us as f64 / 1e3),
    )
}

/// Claim round trips at A summed over the kept runs of `system`.
pub fn claims(runs: &[RunRecord], system: &str) -> u64 {
    runs.iter().filter(|x| x.used && x.system == system).filter_map(|x| x.claim_round_trips).sum()
}

/// The geomirror volume [`EXPORT`] of `pair` as the only geomirror system.
pub fn geomirror_export(label: &'static str, pair: Pair) -> System {
    System::geomirror(label, &Rc::new(RefCell::new(pair)), EXPORT)
}
