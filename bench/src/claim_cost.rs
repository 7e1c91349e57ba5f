//! Part of `two-site`: what a claim costs as the claims record grows
//! (issue "The data path at the machine's limit", item 4). A claim is
//! granted only once the granter's claims file records it durably, so if
//! that durable step rewrote the whole file, a claim would cost more the
//! more extents are owned.
//!
//! How: a pair of its own with the simulator at 0 ms (loopback: what is left
//! is the durable step), one volume of 64 KiB extents, `predict_extents` 0
//! (each first write is one claim) and `release_after` 1h (nothing is
//! released meanwhile). For each step N of owned extents: site A first
//! writes one 4 KiB block into each of the next fresh extents until it owns
//! N (fio, one write per extent, QD32), then one 4 KiB write into each of
//! [`MEASURED`] further fresh extents at QD1: each is one claim round trip,
//! whose latency fio reports. Site B's claims file size is read beside.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::fio::{self, Job, Timing};
use crate::node_status;
use crate::pair::{self, VolumeSpec};
use crate::table::{self, Format, verdict};

/// Extent size of the measured volume (the figures used 64 KiB).
const EXTENT_BYTES: u64 = 64 * 1024;
/// Claims measured per step.
const MEASURED: u64 = 256;
const VOLUME: &str = "claims";
/// How long building up one step may take.
const BUILD_MAX: Duration = Duration::from_secs(600);

/// One step.
#[derive(Clone, Debug, Serialize)]
pub struct ClaimCost {
    /// Extents site A owned when the claims were measured.
    pub owned_extents: u64,
    /// Claims measured (host writes that waited for a claim round trip).
    pub claims: u64,
    /// Write latency p50 / p99 of the measured first writes, µs.
    pub lat_p50_us: Option<f64>,
    pub lat_p99_us: Option<f64>,
    /// Site B's claims file after the step, bytes.
    pub granter_file_bytes: u64,
}

fn fio_job(name: &str, iodepth: u32, first_extent: u64, extents: u64) -> Job {
    Job {
        name: name.to_string(),
        // One 4 KiB write at the start of each extent: write 4 KiB, skip the rest.
        rw: "write:60k",
        block_size: "4k",
        iodepth,
        size: format!("{}", extents * EXTENT_BYTES),
        timing: Timing::Once,
        extra: vec![format!("--offset={}", first_extent * EXTENT_BYTES)],
    }
}

/// Runs the steps (each N at least the previous).
pub fn run(binary: &Path, work: &Path, steps: &[u64]) -> Result<Vec<ClaimCost>> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    if steps.windows(2).any(|w| w[1] < w[0]) {
        bail!("owned-extent steps must not decrease: {steps:?}");
    }
    let top = steps.last().copied().unwrap_or(0);
    let extents = top + MEASURED * (steps.len() as u64 + 1);
    let spec = VolumeSpec {
        name: VOLUME,
        size_bytes: extents * EXTENT_BYTES,
        extent_bytes: EXTENT_BYTES,
        predict_extents: 0,
        max_owned_extents: u32::try_from(extents).context("too many extents")?,
        release_after: "1h",
        ..VolumeSpec::default_named(VOLUME)
    };
    let dir = work.join("claim-cost");
    let mut pair = pair::start(binary, &dir, &[spec], Duration::ZERO, None).context("start the claim-cost pair")?;
    let uri = pair.a.uri(VOLUME);
    let granter_file = dir.join("data-site-b").join("volumes").join(VOLUME).join("claims");
    let mut next = 0u64;
    let mut out = Vec::new();
    for &n in steps {
        let owned = pair.a.status()?.replication(VOLUME)?.owned_extents;
        if n > owned {
            let build = fio_job("claims-build", 32, next, n - owned);
            fio::run(&build, &uri, work).with_context(|| format!("build up to {n} owned extents"))?;
            next += n - owned;
            node_status::wait_for(&pair.a.admin, &format!("site-a owns {n} extents"), Duration::from_millis(50), BUILD_MAX, |s| {
                Ok(s.replication(VOLUME)?.owned_extents >= n)
            })?;
        }
        let before = pair.a.status()?.replication(VOLUME)?;
        let measure = fio_job("claims-measure", 1, next, MEASURED);
        let run = fio::run(&measure, &uri, work).with_context(|| format!("measure claims at {n} owned extents"))?;
        next += MEASURED;
        let after = pair.a.status()?.replication(VOLUME)?;
        let granter_file_bytes = std::fs::metadata(&granter_file).map(|m| m.len()).unwrap_or(0);
        let step = ClaimCost {
            owned_extents: before.owned_extents,
            claims: after.claim_round_trips - before.claim_round_trips,
            lat_p50_us: run.stats.write.lat_p50_us,
            lat_p99_us: run.stats.write.lat_p99_us,
            granter_file_bytes,
        };
        eprintln!(
            "claim cost: {} owned, {} claims, lat p50 {} µs p99 {} µs, B's claims file {} bytes",
            step.owned_extents,
            step.claims,
            table::cell(step.lat_p50_us, Format::OneDecimal),
            table::cell(step.lat_p99_us, Format::OneDecimal),
            step.granter_file_bytes
        );
        out.push(step);
        pair.check_alive()?;
    }
    Ok(out)
}

/// The table, its method, and the target check (claims at ≥ 130k owned
/// within 0.5 ms of the first step's p50).
pub fn print(steps: &[ClaimCost], checks: &mut Vec<String>) {
    if steps.is_empty() {
        return;
    }
    if steps.is_empty() {
        return;
    }
    println!("## Claim latency by owned extents (loopback, 64 KiB extents)\n");
    let base = steps[0].lat_p50_us;
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.owned_extents.to_string(),
                s.claims.to_string(),
                table::cell(s.lat_p50_us.map(|u| u / 1e3), Format::TwoDecimals),
                table::cell(s.lat_p99_us.map(|u| u / 1e3), Format::TwoDecimals),
                match (s.lat_p50_us, base) {
                    (Some(p), Some(b)) => format!("{:+.2}", (p - b) / 1e3),
                    _ => "—".into(),
                },
                format!("{:.1} KiB", s.granter_file_bytes as f64 / 1024.0),
            ]
        })
        .collect();
    println!(
        "{}",
        table::plain_markdown(
            &["owned extents at A", "claims measured", "claim p50 ms", "claim p99 ms", "p50 − first step's, ms", "site B's claims file"],
            &rows
        )
    );
    println!(
        "How: a pair of its own, the simulator at 0 ms between the sites (what a claim costs beyond the WAN: the granter's durable \
         step), volume `{VOLUME}` with 64 KiB extents, predict_extents 0, release_after 1h. Per step, site A first wrote one 4 KiB \
         block into each of the next fresh extents until it owned that many (fio `--rw=write:60k --bs=4k`, QD32), then one 4 KiB \
         write into each of {MEASURED} further fresh extents at QD1 (fio total latency: each is one claim round trip; `claims \
         measured` is the node's count of writes that waited for one). Site B records every claim of A's durably before granting it, \
         so its claims file holds the growing record: since format 5 a claim appends one journal record (and the file is rewritten \
         whole only when the journal outgrows the snapshot).\n"
    );
    if let (Some(last), Some(b)) = (steps.iter().rev().find(|s| s.owned_extents >= 130_000), base)
        && let Some(p) = last.lat_p50_us
    {
        let extra_ms = (p - b) / 1e3;
        checks.push(format!(
            "{} claim latency at {} owned extents: p50 {:+.2} ms against {} owned (target: within 0.5 ms)",
            verdict(extra_ms <= 0.5),
            last.owned_extents,
            extra_ms,
            steps[0].owned_extents
        ));
    }
}
