//! Running fio jobs against an NBD export and reading its JSON output.
//!
//! Every job uses fio's `nbd` ioengine (libnbd) with `--uri`, buffered
//! (`--direct=0`: the engine ignores it, the servers use the page cache) and
//! `--output-format=json`. Both completion (`clat`) and total (`lat`)
//! latency percentiles are requested: with this engine part of a request's
//! time is spent inside the submit call (`slat`: libnbd writes the request
//! and payload to the socket there), so `clat` alone understates the latency
//! an application sees; `lat` = `slat` + `clat` is that latency.
//!
//! fio's nbd engine prints `fio: connected to NBD server` on stdout before the
//! JSON document; [`parse_output`] skips anything before the first line that
//! opens a JSON object.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::procs;

/// How long a job runs.
#[derive(Clone, Copy, Debug)]
pub enum Timing {
    /// Until `size` bytes were transferred once (used to prefill).
    Once,
    /// `--time_based`: `runtime_s` seconds measured after `ramp_s` seconds
    /// that are not counted.
    TimeBased {
        /// Measured seconds.
        runtime_s: u32,
        /// Warm-up seconds, excluded from the results.
        ramp_s: u32,
    },
}

/// One fio job: a single workload on a single export.
#[derive(Clone, Debug)]
pub struct Job {
    /// Job name (shows in fio's output).
    pub name: String,
    /// fio `--rw`: `randwrite`, `randread`, `write`, `read`.
    pub rw: &'static str,
    /// fio `--bs`, e.g. `4k`, `1m`.
    pub block_size: &'static str,
    /// fio `--iodepth`: requests in flight on the one NBD connection.
    pub iodepth: u32,
    /// fio `--size`: the region of the export the job touches, from offset 0.
    pub size: String,
    /// How long it runs.
    pub timing: Timing,
    /// Further fio options, e.g. `--offset=512m`,
    /// `--random_distribution=zipf:1.2`.
    pub extra: Vec<String>,
}

/// Which half of fio's per-job results a job's figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The `read` half.
    Read,
    /// The `write` half.
    Write,
}

impl Job {
    /// The direction the job's figures are read from (mixed workloads are
    /// not used here; they would report `Read`).
    pub fn direction(&self) -> Direction {
        if self.rw.contains("read") { Direction::Read } else { Direction::Write }
    }

    /// The fio command line (without the program name) for export `uri`.
    pub fn args(&self, uri: &str) -> Vec<String> {
        // `--uri` is the nbd engine's option: it comes after `--ioengine`.
        let mut args = vec![format!("--name={}", self.name)];
        args.extend(self.shared_args());
        args.extend([format!("--uri={uri}"), format!("--size={}", self.size)]);
        args
    }

    /// The command line of this job run at two sites at once, each over
    /// `size` bytes of its own export: site A's at offset 0, site B's at
    /// `offset_b`; their figures summed (`--group_reporting`).
    pub fn two_site_args(&self, uri_a: &str, uri_b: &str, offset_b: u64) -> Vec<String> {
        let mut args = self.shared_args();
        args.extend([format!("--size={}", self.size), "--group_reporting".into()]);
        args.extend([format!("--name={}-a", self.name), format!("--uri={uri_a}")]);
        args.extend([format!("--name={}-b", self.name), format!("--uri={uri_b}"), format!("--offset={offset_b}")]);
        args
    }

    /// The command line of this job on a plain file at `path` instead of
    /// an export: fio's `psync` engine (buffered `pwrite`), e.g. with
    /// `--fdatasync=1` in `extra` to time one fdatasync after every write.
    pub fn file_args(&self, path: &Path) -> Vec<String> {
        let mut args = vec![format!("--name={}", self.name), "--ioengine=psync".into()];
        args.extend(self.options());
        args.extend([format!("--filename={}", path.display()), format!("--size={}", self.size)]);
        args
    }

    /// Every option but the job's name, export and size.
    fn shared_args(&self) -> Vec<String> {
        let mut args = vec!["--ioengine=nbd".to_string()];
        args.extend(self.options());
        args
    }

    /// Every option but the engine and the job's name, target and size.
    fn options(&self) -> Vec<String> {
        let mut args = vec![
            format!("--rw={}", self.rw),
            format!("--bs={}", self.block_size),
            format!("--iodepth={}", self.iodepth),
            "--direct=0".into(),
            "--output-format=json".into(),
            // Only the percentiles we report: keeps the saved JSON small.
            "--clat_percentiles=1".into(),
            "--lat_percentiles=1".into(),
            "--percentile_list=50:99".into(),
        ];
        if let Timing::TimeBased { runtime_s, ramp_s } = self.timing {
            args.extend(["--time_based".into(), format!("--runtime={runtime_s}")]);
            if ramp_s > 0 {
                args.push(format!("--ramp_time={ramp_s}"));
            }
        }
        args.extend(self.extra.iter().cloned());
        if let Some(cpu) = procs::pinned_cpu("fio") {
            args.push(format!("--cpus_allowed={cpu}"));
        }
        args
    }

    /// A generous deadline after which the job is considered hung.
    fn deadline(&self) -> Duration {
        match self.timing {
            Timing::Once => Duration::from_secs(300),
            Timing::TimeBased { runtime_s, ramp_s } => Duration::from_secs(u64::from(runtime_s + ramp_s) + 60),
        }
    }
}

/// Figures of one direction (read or write) of one job.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DirStats {
    /// Requests completed in the measured period.
    pub total_ios: u64,
    /// Requests per second.
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Mean submission latency (time inside the submit call), µs.
    pub slat_mean_us: f64,
    /// Mean completion latency (submit returned → completion), µs.
    pub clat_mean_us: f64,
    /// Completion latency percentiles, µs.
    pub clat_p50_us: Option<f64>,
    /// 99th percentile of completion latency, µs.
    pub clat_p99_us: Option<f64>,
    /// Mean total latency (slat + clat), µs.
    pub lat_mean_us: f64,
    /// Median total latency, µs.
    pub lat_p50_us: Option<f64>,
    /// 99th percentile of total latency, µs.
    pub lat_p99_us: Option<f64>,
    /// Median total latency from fio's log of every I/O, µs: present when
    /// the job ran with [`per_io_latency_options`]. fio's own percentiles
    /// are the middles of histogram bins 1/64 of a power of two wide (32.8 µs
    /// between 2.1 and 4.2 ms); this one is the measured value.
    pub lat_p50_exact_us: Option<f64>,
}

/// Parsed results of one fio job.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JobStats {
    /// fio's own CPU use (`usr_cpu` + `sys_cpu`), % of one CPU over the
    /// measured period.
    pub client_cpu_percent: f64,
    /// The read half.
    pub read: DirStats,
    /// The write half.
    pub write: DirStats,
}

impl JobStats {
    /// The half of `direction`.
    pub fn dir(&self, direction: Direction) -> &DirStats {
        match direction {
            Direction::Read => &self.read,
            Direction::Write => &self.write,
        }
    }
}

/// A finished job: parsed figures plus fio's whole JSON document.
#[derive(Clone, Debug)]
pub struct Run {
    /// The figures.
    pub stats: JobStats,
    /// fio's JSON output, as it was.
    pub raw: Value,
}

/// Runs `job` against `uri`; fio's output files go to `work_dir`.
pub fn run(job: &Job, uri: &str, work_dir: &Path) -> Result<Run> {
    run_args(job, job.args(uri), uri, work_dir)
}

/// Runs `job` on the plain file `path` (see [`Job::file_args`]).
pub fn run_file(job: &Job, path: &Path, work_dir: &Path) -> Result<Run> {
    run_args(job, job.file_args(path), &path.display().to_string(), work_dir)
}

/// Runs `job` at two sites at once (see [`Job::two_site_args`]); the
/// figures are the sum of both.
pub fn run_two_sites(job: &Job, uri_a: &str, uri_b: &str, offset_b: u64, work_dir: &Path) -> Result<Run> {
    run_args(job, job.two_site_args(uri_a, uri_b, offset_b), &format!("{uri_a} and {uri_b}"), work_dir)
}

fn run_args(job: &Job, args: Vec<String>, uri: &str, work_dir: &Path) -> Result<Run> {
    let per_io = args.iter().any(|a| *a == per_io_latency_options(work_dir)[0]);
    remove_per_io_logs(work_dir)?;
    let output = procs::run_to_completion("fio", &args, work_dir, &job.name, job.deadline())
        .with_context(|| format!("run fio job `{}` on {uri}", job.name))?;
    if !output.status.success() {
        bail!(
            "fio job `{}` on {uri} failed ({}); command: fio {}\nfio stderr (tail):\n{}\nfio stdout (tail):\n{}",
            job.name,
            output.status,
            args.join(" "),
            procs::tail_lines(&output.stderr, 15),
            procs::tail_lines(&output.stdout, 15),
        );
    }
    let (mut stats, raw) = parse_output(&output.stdout)
        .with_context(|| format!("read fio's JSON for job `{}`; stderr (tail):\n{}", job.name, procs::tail_lines(&output.stderr, 15)))?;
    if per_io {
        let texts = (1..)
            .map(|index| per_io_log(work_dir, "lat", index))
            .take_while(|f| f.exists())
            .map(|f| std::fs::read_to_string(&f).with_context(|| format!("read fio's latency log {}", f.display())))
            .collect::<Result<Vec<_>>>()?;
        let [reads, writes] = per_io_latencies(&texts).with_context(|| format!("fio job `{}`", job.name))?;
        // One fio job per `--name` of the command line, each with its own
        // I/Os in flight at the end.
        let jobs = args.iter().filter(|a| a.starts_with("--name=")).count() as u64;
        for (d, values) in [(&mut stats.read, reads), (&mut stats.write, writes)] {
            // The log holds the measured period only (fio starts it after
            // the ramp): as many entries as fio counted I/Os, give or take
            // those in flight at the end. Otherwise the figure stays fio's.
            if (values.len() as u64).abs_diff(d.total_ios) > jobs * u64::from(job.iodepth) {
                eprintln!(
                    "warning: fio job `{}` on {uri}: {} entries in the latency log, {} I/Os in its JSON: no exact median, fio's \
                     percentile stands",
                    job.name,
                    values.len(),
                    d.total_ios
                );
                continue;
            }
            d.lat_p50_exact_us = exact_median(values).map(|ns| ns / 1000.0);
        }
        remove_per_io_logs(work_dir)?;
    }
    Ok(Run { stats, raw })
}

fn remove_per_io_logs(work_dir: &Path) -> Result<()> {
    for f in per_io_log_files(work_dir) {
        std::fs::remove_file(&f).with_context(|| format!("remove {}", f.display()))?;
    }
    Ok(())
}

/// Parses fio's `--output-format=json` stdout (possibly preceded by log lines)
/// into the figures of its first job, and returns the whole document too.
pub fn parse_output(stdout: &str) -> Result<(JobStats, Value)> {
    let start = json_start(stdout).context("fio printed no JSON document")?;
    let value: Value = serde_json::Deserializer::from_str(&stdout[start..])
        .into_iter::<Value>()
        .next()
        .context("fio's JSON document is empty")?
        .context("fio's JSON document does not parse")?;
    let job = value.get("jobs").and_then(|jobs| jobs.get(0)).context("fio's JSON has no `jobs[0]`")?;
    let error = job.get("error").and_then(Value::as_i64).unwrap_or(0);
    if error != 0 {
        bail!("fio reports error {error} for job `{}`", job.get("jobname").and_then(Value::as_str).unwrap_or("?"));
    }
    let cpu = |key: &str| job.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    let stats =
        JobStats { client_cpu_percent: cpu("usr_cpu") + cpu("sys_cpu"), read: dir_stats(job, "read")?, write: dir_stats(job, "write")? };
    Ok((stats, value))
}

/// Byte offset of the first line that starts with `{`.
fn json_start(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('{') {
            return Some(offset + (line.len() - line.trim_start().len()));
        }
        offset += line.len();
    }
    None
}

fn dir_stats(job: &Value, half: &str) -> Result<DirStats> {
    let d = job.get(half).with_context(|| format!("fio's JSON has no `{half}` section"))?;
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
    let mean_us = |key: &str| d.get(key).and_then(|s| num(s, "mean")).unwrap_or(0.0) / 1000.0;
    let pct_us = |key: &str, p: f64| d.get(key).and_then(|s| percentile_ns(s, p)).map(|ns| ns / 1000.0);
    Ok(DirStats {
        total_ios: d.get("total_ios").and_then(Value::as_u64).unwrap_or(0),
        iops: num(d, "iops").with_context(|| format!("fio's `{half}` section has no `iops`"))?,
        bw_bytes: num(d, "bw_bytes").with_context(|| format!("fio's `{half}` section has no `bw_bytes`"))?,
        slat_mean_us: mean_us("slat_ns"),
        clat_mean_us: mean_us("clat_ns"),
        clat_p50_us: pct_us("clat_ns", 50.0),
        clat_p99_us: pct_us("clat_ns", 99.0),
        lat_mean_us: mean_us("lat_ns"),
        lat_p50_us: pct_us("lat_ns", 50.0),
        lat_p99_us: pct_us("lat_ns", 99.0),
        lat_p50_exact_us: None,
    })
}

/// File name prefix of the per-I/O latency logs (in the job's work dir;
/// removed after the run).
const PER_IO_LOG_PREFIX: &str = "per-io";

/// fio options that log the total latency of every I/O after the ramp, in
/// `work_dir` (pass the same to [`run`] or its siblings, which then fill
/// [`DirStats::lat_p50_exact_us`] and remove the logs).
pub fn per_io_latency_options(work_dir: &Path) -> Vec<String> {
    vec![format!("--write_lat_log={}", work_dir.join(PER_IO_LOG_PREFIX).display()), "--log_avg_msec=0".into()]
}

/// One log file fio writes for [`per_io_latency_options`]: `kind` is
/// `lat`, `clat` or `slat`, `index` the job's number on the command line
/// (from 1).
fn per_io_log(work_dir: &Path, kind: &str, index: usize) -> std::path::PathBuf {
    work_dir.join(format!("{PER_IO_LOG_PREFIX}_{kind}.{index}.log"))
}

/// Every log file fio wrote for [`per_io_latency_options`].
fn per_io_log_files(work_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for index in 1.. {
        let present: Vec<_> =
            ["lat", "clat", "slat"].map(|kind| per_io_log(work_dir, kind, index)).into_iter().filter(|f| f.exists()).collect();
        if present.is_empty() {
            break;
        }
        files.extend(present);
    }
    files
}

/// Total latencies (ns) per direction, read and write, from the text of
/// fio's `_lat` logs: lines `time_ms, value_ns, direction, block_size, ...`
/// (direction 0 read, 1 write; others, e.g. trims, are skipped).
fn per_io_latencies(texts: &[String]) -> Result<[Vec<u64>; 2]> {
    let mut out = [Vec::new(), Vec::new()];
    for text in texts {
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let mut fields = line.split(',').map(str::trim);
            let parse = |f: Option<&str>| f.and_then(|v| v.parse::<u64>().ok());
            let (_time, value, direction) = (fields.next(), parse(fields.next()), parse(fields.next()));
            let (Some(value), Some(direction)) = (value, direction) else {
                bail!("line {} of a per-I/O latency log does not parse: {line:?}", n + 1);
            };
            if let Some(list) = out.get_mut(direction as usize) {
                list.push(value);
            }
        }
    }
    Ok(out)
}

/// The median (the lower middle for an even count) of `values`, unsorted.
fn exact_median(mut values: Vec<u64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[(values.len() - 1) / 2] as f64)
}

/// The `p`th percentile (µs) of the latency of fio's first job's syncs
/// (its `sync` section): an fdatasync with the `psync` engine and
/// `--fdatasync=1`, an NBD FLUSH with the `nbd` engine and `--fsync=1`.
/// Absent when the job issued none.
pub fn sync_latency_us(raw: &Value, p: f64) -> Option<f64> {
    percentile_ns(raw.get("jobs")?.get(0)?.get("sync")?.get("lat_ns")?, p).map(|ns| ns / 1000.0)
}

/// The `p`th percentile (ns) of a latency section: fio keys them as strings
/// like `"50.000000"`. Absent when the job did no I/O in that direction.
fn percentile_ns(section: &Value, p: f64) -> Option<f64> {
    let table = section.get("percentile")?.as_object()?;
    table.iter().find(|(key, _)| key.parse::<f64>().is_ok_and(|k| (k - p).abs() < 1e-9)).and_then(|(_, v)| v.as_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_io_logs_give_the_exact_median_per_direction() {
        // fio 3.33's `_lat` log lines: time ms, latency ns, direction, bs, priority.
        let one = "0, 2261000, 1, 4096, 0\n1, 2300000, 1, 4096, 0\n3, 90000, 0, 4096, 0\n".to_string();
        let two = "2, 2250000, 1, 4096, 0\n5, 2400000, 1, 4096, 0\n6, 1000, 2, 4096, 0\n".to_string();
        let [reads, writes] = per_io_latencies(&[one, two.clone()]).unwrap();
        assert_eq!(reads, [90_000]);
        assert_eq!(writes.len(), 4, "both jobs' logs, the trim skipped");
        // Sorted: 2,250,000 2,261,000 2,300,000 2,400,000: the lower middle.
        assert_eq!(exact_median(writes), Some(2_261_000.0));
        assert_eq!(exact_median(vec![5, 1, 3]), Some(3.0));
        assert_eq!(exact_median(Vec::new()), None);
        let broken = per_io_latencies(&[two, "7, fast, 1, 4096, 0\n".into()]).unwrap_err();
        assert!(broken.to_string().contains("line 1"), "{broken}");
    }

    /// Shape of fio 3.33's output with the nbd engine (trimmed), including
    /// the line the engine prints before the JSON document.
    const SAMPLE: &str = r#"fio: connected to NBD server
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "randwrite-4k-qd1",
      "error" : 0,
      "read" : {
        "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.000000, "total_ios" : 0,
        "slat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "N" : 0 },
        "clat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "N" : 0 },
        "lat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "N" : 0 }
      },
      "write" : {
        "io_bytes" : 37285888, "bw_bytes" : 18633627, "iops" : 4549.225387, "total_ios" : 9103,
        "slat_ns" : { "min" : 7333, "max" : 3779557, "mean" : 56903.5, "N" : 9103 },
        "clat_ns" : { "min" : 4960, "max" : 7867123, "mean" : 160380.5, "N" : 9103,
                      "percentile" : { "50.000000" : 93696, "99.000000" : 1843200 } },
        "lat_ns" : { "min" : 58259, "max" : 7867123, "mean" : 217284.0, "N" : 9103,
                     "percentile" : { "50.000000" : 211968, "99.000000" : 2000000 } }
      },
      "usr_cpu" : 3.75,
      "sys_cpu" : 24.85
    }
  ]
}
"#;

    #[test]
    fn parses_the_nbd_engine_output() {
        let (stats, raw) = parse_output(SAMPLE).unwrap();
        let w = &stats.write;
        assert_eq!(w.total_ios, 9103);
        assert!((w.iops - 4549.225387).abs() < 1e-6);
        assert_eq!(w.bw_bytes, 18633627.0);
        assert_eq!(w.clat_p50_us, Some(93.696));
        assert_eq!(w.clat_p99_us, Some(1843.2));
        assert_eq!(w.lat_p50_us, Some(211.968));
        assert!((w.slat_mean_us - 56.9035).abs() < 1e-9);
        assert!((w.lat_mean_us - 217.284).abs() < 1e-9);
        // The idle direction has no percentiles.
        assert_eq!(stats.read.total_ios, 0);
        assert_eq!(stats.read.clat_p50_us, None);
        assert_eq!(stats.dir(Direction::Write), w);
        assert!((stats.client_cpu_percent - 28.6).abs() < 1e-9);
        assert_eq!(raw["fio version"], "fio-3.33");
    }

    #[test]
    fn reads_sync_latency() {
        // fio 3.33, psync engine with --fdatasync=1 (trimmed).
        let raw: Value = serde_json::from_str(
            r#"{ "jobs" : [ { "sync" : { "total_ios" : 0, "lat_ns" : { "min" : 140108, "N" : 9638,
                 "percentile" : { "50.000000" : 195584, "99.000000" : 288768 } } } } ] }"#,
        )
        .unwrap();
        assert_eq!(sync_latency_us(&raw, 50.0), Some(195.584));
        assert_eq!(sync_latency_us(&raw, 99.0), Some(288.768));
        let (_, no_syncs) = parse_output(SAMPLE).unwrap();
        assert_eq!(sync_latency_us(&no_syncs, 50.0), None);
    }

    #[test]
    fn reports_fio_job_errors_and_missing_json() {
        let failed = SAMPLE.replace(r#""error" : 0"#, r#""error" : 5"#);
        let err = parse_output(&failed).unwrap_err().to_string();
        assert!(err.contains("error 5") && err.contains("randwrite-4k-qd1"), "{err}");
        assert!(parse_output("fio: connected to NBD server\n").is_err());
        assert!(parse_output("{ \"jobs\" : [] }").is_err());
    }

    #[test]
    fn job_arguments() {
        let job = Job {
            name: "randread-4k-qd1".into(),
            rw: "randread",
            block_size: "4k",
            iodepth: 1,
            size: "256m".into(),
            timing: Timing::TimeBased { runtime_s: 5, ramp_s: 1 },
            extra: vec!["--offset=512m".into()],
        };
        let args = job.args("nbd://127.0.0.1:1234/vol0");
        let wanted = [
            "--ioengine=nbd",
            "--uri=nbd://127.0.0.1:1234/vol0",
            "--rw=randread",
            "--iodepth=1",
            "--size=256m",
            "--time_based",
            "--runtime=5",
            "--ramp_time=1",
            "--direct=0",
            "--offset=512m",
        ];
        for want in wanted {
            assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
        }
        assert_eq!(job.direction(), Direction::Read);
        let no_ramp = Job { timing: Timing::TimeBased { runtime_s: 5, ramp_s: 0 }, ..job.clone() };
        assert!(!no_ramp.args("u").iter().any(|a| a.starts_with("--ramp_time")));
        let both = job.two_site_args("nbd://a/v", "nbd://b/v", 1 << 28);
        let first_name = both.iter().position(|a| a.starts_with("--name=")).unwrap();
        assert!(both[..first_name].iter().any(|a| a == "--group_reporting"), "global options come first: {both:?}");
        assert!(both[..first_name].iter().any(|a| a == "--size=256m"));
        let b = both.iter().position(|a| a == "--uri=nbd://b/v").unwrap();
        assert_eq!(both[b + 1], "--offset=268435456", "site B's job has its own region");
        let prefill = Job { rw: "write", timing: Timing::Once, ..job };
        assert!(!prefill.args("u").iter().any(|a| a == "--time_based"));
        let file = prefill.file_args(Path::new("/t/f"));
        for want in ["--ioengine=psync", "--filename=/t/f", "--size=256m", "--rw=write", "--offset=512m"] {
            assert!(file.iter().any(|a| a == want), "missing {want} in {file:?}");
        }
        assert!(!file.iter().any(|a| a.starts_with("--uri") || a == "--ioengine=nbd"));
        assert_eq!(prefill.direction(), Direction::Write);
    }
}
