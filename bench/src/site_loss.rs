//! `site-loss`: the day a site dies, measured (issue "The day a site dies").
//!
//! Phase 1, *loss* (`--reps` times, each on a fresh pair with a witness,
//! product defaults: heartbeat 500 ms / timeout 1.5 s, lease 2 s, drift bound
//! 250 ms): site A writes 1 MiB and its copies become durable at B; then A
//! dies silently (the simulator holds the A–B link, so B hears nothing, not
//! even a reset, then A is killed with SIGKILL). Measured from the moment the
//! link goes silent:
//! - *detect*: until B's `/status` shows the peer link down;
//! - *first write*: until a 4 KiB write at B into a clean extent, issued at
//!   once over an NBD connection opened before, is acknowledged (B must be
//!   made survivor by the witness and wait out A's lease plus the drift
//!   bound before it claims alone);
//! - *takeover*: from `POST /takeover` at B until a read of A's extent at B
//!   returns A's data (checked).
//!
//! Phase 2, *resync by owned extents* (a 4 GiB volume, no witness): A owns N
//! extents (one 4 KiB write each, every 4th extent so prediction claims
//! nothing more), its copies durable at B; then, with the link held, A
//! rewrites one block of each (B lacks them), A is killed, B notices, the
//! link heals, A restarts. Measured: the resync A reports (extents compared, blocks that
//! differed), bytes through the simulator each way from A's restart until
//! both nodes are `connected`, and that time; the bound is N × 1 MiB, the
//! volume 4 GiB. Every rewritten block is read back at B and checked.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::CommonArgs;
use crate::machine::{Machine, loadavg};
use crate::nbd::Client;
use crate::node_status::{self, NodeStatus};
use crate::pair::{self, Node, Pair, VolumeSpec};
use crate::{procs, sim, stats, table};

/// Flags of `site-loss`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Round-trip time of the simulated WAN between the sites.
    #[arg(long, default_value = "20ms")]
    rtt: String,
    /// Repetitions of the loss phase (a fresh pair each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Owned-extent counts of the resync phase, comma-separated.
    #[arg(long, default_value = "16,128,1024", value_delimiter = ',')]
    owned: Vec<u64>,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

const VOLUME: &str = "s0";
const VOLUME_BYTES: u64 = 4 << 30;
const BLOCK: usize = 4096;
/// Extents between two owned ones in the resync phase (no prediction).
const STRIDE_EXTENTS: u64 = 4;
/// Writer connections filling the owned extents (each write is a claim).
const WRITERS: u64 = 8;
/// How long any one wait may take before the run fails.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// One loss repetition.
#[derive(Clone, Debug, Serialize)]
struct Loss {
    detect_s: f64,
    first_write_s: f64,
    takeover_s: f64,
    steal_cpus: Option<f64>,
}

/// One resync measurement.
#[derive(Clone, Debug, Serialize)]
struct Resync {
    owned: u64,
    bound_bytes: u64,
    extents_compared: u64,
    blocks_differing: u64,
    bytes_a_to_b: u64,
    bytes_b_to_a: u64,
    restart_to_connected_s: f64,
    link_up_to_connected_s: f64,
}

fn spec() -> VolumeSpec {
    VolumeSpec { size_bytes: VOLUME_BYTES, ..VolumeSpec::default_named(VOLUME) }
}

fn pattern(byte: u8) -> Vec<u8> {
    vec![byte; BLOCK]
}

fn status(node: &Node) -> Result<NodeStatus> {
    node.status()
}

/// Polls `node` every 5 ms until `done`; returns the time since `since`.
fn until(node: &Node, what: &str, since: Instant, mut done: impl FnMut(&NodeStatus) -> bool) -> Result<Duration> {
    let (_, _) = node_status::wait_for(&node.admin, what, Duration::from_millis(5), WAIT_MAX, |s| Ok(done(s)))?;
    Ok(since.elapsed())
}

fn loss_once(binary: &Path, dir: &Path, rtt: Duration) -> Result<Loss> {
    let steal = crate::load::Probe::start(&[]);
    let mut pair = pair::start_with(binary, dir, &[spec()], rtt, None, true)?;
    for node in [&pair.a, &pair.b] {
        let what = format!("{}: witness connected", node.name);
        node_status::wait_for(&node.admin, &what, Duration::from_millis(20), WAIT_MAX, |s| Ok(s.witness_connected()))?;
    }
    let mut a = Client::connect(&pair.a.nbd, VOLUME)?;
    for i in 0..256u64 {
        a.write(i * BLOCK as u64, &pattern(0xa1))?;
    }
    drop(a);
    pair.a.wait_durable(VOLUME, WAIT_MAX)?;
    let mut b = Client::connect(&pair.b.nbd, VOLUME)?;

    // A dies silently: the link holds (B sees no reset), then A is killed.
    let died = Instant::now();
    pair.sim.partition_hold()?;
    pair.a.kill9();
    let detector = {
        let admin = pair.b.admin.clone();
        std::thread::spawn(move || -> Result<Duration> {
            node_status::wait_for(&admin, "site-b: peer link down", Duration::from_millis(5), WAIT_MAX, |s| Ok(!s.link_up()))?;
            Ok(died.elapsed())
        })
    };
    // A clean extent, far from A's: B claims it alone once it may.
    b.write(2 << 30, &pattern(0xb1)).context("the survivor's first write in a clean extent")?;
    let first_write = died.elapsed();
    let detect = detector.join().map_err(|_| anyhow::anyhow!("the detector panicked"))??;
    let health = status(&pair.b)?.health().to_string();
    if health != "survivor" {
        bail!("site-b wrote alone but reports health `{health}`");
    }

    let taking = Instant::now();
    crate::http::request(&pair.b.admin, "POST", &format!("/takeover?volume={VOLUME}&confirm=yes"), None)?;
    let mut got = vec![0u8; BLOCK];
    b.read(0, &mut got)?;
    let takeover = taking.elapsed();
    if got != pattern(0xa1) {
        bail!("after the takeover, site-b read other bytes than A's acknowledged (and copied) write");
    }
    pair.check_alive_except_a()?;
    let load = steal.finish();
    Ok(Loss {
        detect_s: detect.as_secs_f64(),
        first_write_s: first_write.as_secs_f64(),
        takeover_s: takeover.as_secs_f64(),
        steal_cpus: load.steal_cpus,
    })
}

/// Writes one 4 KiB block of `byte` into each of `extents`, over
/// [`WRITERS`] connections.
fn write_extents(nbd: &str, extents: &[u64], byte: u8) -> Result<()> {
    let chunks: Vec<Vec<u64>> =
        (0..WRITERS).map(|w| extents.iter().copied().skip(w as usize).step_by(WRITERS as usize).collect()).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let nbd = nbd.to_string();
            std::thread::spawn(move || -> Result<()> {
                let mut c = Client::connect(&nbd, VOLUME)?;
                for e in chunk {
                    c.write(e * pair::EXTENT_BYTES, &pattern(byte))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    Ok(())
}

fn resync_once(binary: &Path, dir: &Path, rtt: Duration, owned: u64) -> Result<Resync> {
    let extents: Vec<u64> = (0..owned).map(|i| i * STRIDE_EXTENTS).collect();
    if extents.last().is_some_and(|&e| (e + 1) * pair::EXTENT_BYTES > VOLUME_BYTES) {
        bail!("{owned} extents every {STRIDE_EXTENTS} do not fit a {VOLUME_BYTES}-byte volume");
    }
    let mut pair = pair::start(binary, dir, &[spec()], rtt, None)?;
    write_extents(&pair.a.nbd, &extents, 0x51)?;
    pair.a.wait_durable(VOLUME, WAIT_MAX)?;
    let held = status(&pair.a)?.replication(VOLUME)?.owned_extents;
    if held < owned {
        bail!("site-a owns {held} extents, expected at least {owned}");
    }
    // B misses one rewritten block per extent; then A dies.
    pair.sim.partition_hold()?;
    write_extents(&pair.a.nbd, &extents, 0x52)?;
    pair.a.kill9();
    // B notices first (its end of the held connection closes), so that no
    // copy held in the simulator reaches B after the heal: the resync alone
    // moves what B lacks.
    until(&pair.b, "site-b: peer link down", Instant::now(), |s| !s.link_up())?;
    pair.sim.heal()?;
    let before = pair.sim.status()?.counters;
    let restarted = Instant::now();
    pair.a.restart(binary, dir.join("site-a-restarted.log"))?;
    let link_up = until(&pair.a, "site-a: link up", restarted, NodeStatus::link_up)?;
    let connected = until(&pair.a, "site-a: resynced and connected", restarted, |s| s.health() == "connected")?;
    until(&pair.b, "site-b: connected", restarted, |s| s.health() == "connected")?;
    let after = pair.sim.status()?.counters;
    let log = std::fs::read_to_string(dir.join("site-a-restarted.log")).unwrap_or_default();
    let (compared, differing) = resync_done_line(&log).context("site-a logged no `resync with the peer done` line")?;
    pair.a.wait_durable(VOLUME, WAIT_MAX)?;
    let mut b = Client::connect(&pair.b.nbd, VOLUME)?;
    let mut got = vec![0u8; BLOCK];
    for &e in &extents {
        b.read(e * pair::EXTENT_BYTES, &mut got)?;
        if got != pattern(0x52) {
            bail!("extent {e}: site-b does not hold A's last acknowledged write after the resync");
        }
    }
    Ok(Resync {
        owned,
        bound_bytes: owned * pair::EXTENT_BYTES,
        extents_compared: compared,
        blocks_differing: differing,
        bytes_a_to_b: after.ab.delivered_bytes - before.ab.delivered_bytes,
        bytes_b_to_a: after.ba.delivered_bytes - before.ba.delivered_bytes,
        restart_to_connected_s: connected.as_secs_f64(),
        link_up_to_connected_s: (connected - link_up).as_secs_f64(),
    })
}

/// `extents=N blocks_differing=M` of the log line that ends a resync.
fn resync_done_line(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("resync with the peer done"))?;
    let field = |name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((field("extents")?, field("blocks_differing")?))
}

/// Runs the benchmark and prints its tables.
pub fn run(args: &Args) -> Result<()> {
    let binary = args.common.geomirror_binary()?;
    let rtt = sim::parse_duration(&args.rtt)?;
    let machine = Machine::describe();
    let temp = args.common.temp_dir()?;
    let mut losses = Vec::new();
    for rep in 0..args.reps {
        let dir = temp.path().join(format!("loss-{rep}"));
        losses.push(loss_once(&binary, &dir, rtt).with_context(|| format!("loss repetition {rep} (logs in {})", dir.display()))?);
    }
    let mut resyncs = Vec::new();
    for &owned in &args.owned {
        let dir = temp.path().join(format!("resync-{owned}"));
        resyncs.push(resync_once(&binary, &dir, rtt, owned).with_context(|| format!("resync with {owned} owned extents"))?);
    }
    let tools = std::collections::BTreeMap::from([("geomirror", procs::build_info(&binary))]);
    let command: Vec<String> = std::env::args().collect();
    machine.print_header("site-loss", &loadavg(), &tools, &command);
    println!(
        "- link: `geomirror sim` between the sites, RTT {:.0} ms; the witness reached directly; all on 127.0.0.1",
        rtt.as_secs_f64() * 1e3
    );
    println!();
    println!("## Losing a site (silent death of site A; {} repetitions, median [min–max])\n", losses.len());
    let figure = |f: fn(&Loss) -> f64, ms: bool| {
        let scale = if ms { 1e3 } else { 1.0 };
        let values: Vec<f64> = losses.iter().map(|l| f(l) * scale).collect();
        let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let (unit, digits) = if ms { ("ms", 1) } else { ("s", 2) };
        let median = stats::median(&values).unwrap_or(f64::NAN);
        format!("{median:.digits$} {unit} [{lo:.digits$}–{hi:.digits$}]")
    };
    let steal = losses.iter().filter_map(|l| l.steal_cpus).fold(0.0f64, f64::max);
    let rows = vec![
        vec!["peer loss detected at B".into(), figure(|l| l.detect_s, false), "≤ 2 s (heartbeat timeout 1.5 s)".into()],
        vec![
            "first write at B in a clean extent".into(),
            figure(|l| l.first_write_s, false),
            "≤ 5 s (detect + heartbeat interval + lease 2 s + drift 250 ms)".into(),
        ],
        vec!["takeover: request to first read of A's extent at B".into(), figure(|l| l.takeover_s, true), "—".into()],
    ];
    println!("{}", table::plain_markdown(&["figure", "measured", "target"], &rows));
    println!("Hypervisor steal during the repetitions: at most {steal:.2} CPUs.\n");
    println!(
        "## Resync after site A crashed, by owned extents ({} GiB volume, 1 MiB extents, one block per extent missing at B)\n",
        VOLUME_BYTES >> 30
    );
    let rows: Vec<Vec<String>> = resyncs
        .iter()
        .map(|r| {
            vec![
                r.owned.to_string(),
                format!("{} MiB", r.bound_bytes >> 20),
                r.extents_compared.to_string(),
                r.blocks_differing.to_string(),
                format!("{:.2} MiB", r.bytes_a_to_b as f64 / (1 << 20) as f64),
                format!("{:.2} MiB", r.bytes_b_to_a as f64 / (1 << 20) as f64),
                format!("{:.2} s", r.restart_to_connected_s),
                format!("{:.2} s", r.link_up_to_connected_s),
            ]
        })
        .collect();
    println!(
        "{}",
        table::plain_markdown(
            &[
                "owned extents",
                "bound (owned × extent)",
                "extents compared",
                "blocks differing",
                "link A→B",
                "link B→A",
                "restart → connected",
                "link up → connected",
            ],
            &rows
        )
    );
    println!(
        "Link bytes include TLS, the session start and the checksums (B→A); the volume is {} GiB, so a resync bounded by the volume \
         would compare 4096 extents.",
        VOLUME_BYTES >> 30
    );
    if let Some(path) = &args.common.json {
        let json = serde_json::json!({ "machine": machine, "losses": losses, "resyncs": resyncs });
        std::fs::write(path, serde_json::to_string_pretty(&json)?).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

impl Pair {
    /// Fails with the log tail of B, the simulator or the witness if one exited.
    fn check_alive_except_a(&mut self) -> Result<()> {
        self.b.server.check_alive()?;
        self.sim.server.check_alive()?;
        if let Some(w) = &mut self.witness {
            w.check_alive()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resync_line_is_parsed() {
        let line = "2026-12-05T08:38:54Z INFO node{node=site-a}: geomirror_node::engine: resync with the peer done volume=\"vol0\" extents=2 blocks_differing=16";
        assert_eq!(resync_done_line(line), Some((2, 16)));
        assert_eq!(resync_done_line("nothing"), None);
    }
}
