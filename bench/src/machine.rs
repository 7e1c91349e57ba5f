//! What the benchmark ran on and when, for report headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The machine and the time of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// First `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// cpuidle driver (`haltpoll` on this kind of VM: QD1 latency depends on wake-ups).
    pub cpuidle: String,
    /// Start of the run, UTC, RFC 3339.
    pub started_utc: String,
    /// /proc/loadavg at the start.
    pub loadavg_at_start: String,
    /// Busy fraction of all CPUs over 1 s just before the run: other work
    /// on the 2 vCPUs skews the results.
    pub cpu_busy_before: Option<f64>,
}

impl Machine {
    /// Prints the common report header: title, date, machine, load, tools, command.
    pub fn print_header(
        &self,
        title: &str,
        loadavg_at_end: &str,
        tools: &std::collections::BTreeMap<&'static str, String>,
        command: &[String],
    ) {
        println!("# geomirror {title} benchmark\n");
        println!("- date: {}", self.started_utc);
        println!("- machine: {} CPUs ({}), kernel {}, cpuidle {}", self.nproc, self.cpu, self.kernel, self.cpuidle);
        println!(
            "- CPUs busy just before the run: {}; load average (1/5/15 min): {} at start, {} at end",
            self.cpu_busy_before.map_or_else(|| "n/a".into(), |b| format!("{:.0} %", b * 100.0)),
            self.loadavg_at_start,
            loadavg_at_end
        );
        println!("- tools: {}", tools.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "));
        println!("- command: `{}`", command.join(" "));
        if crate::procs::is_pinned() {
            println!("- CPUs: pinned (`--pin`): site A, the local servers and fio on CPU 0; site B and every simulator on CPU 1");
        } else {
            println!("- CPUs: not pinned: every process may run on both CPUs");
        }
    }

    /// Reads the machine description now (takes 1 s: samples CPU use).
    pub fn describe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpu,
            cpuidle: read("/sys/devices/system/cpu/cpuidle/current_driver"),
            started_utc: rfc3339_utc(SystemTime::now()),
            loadavg_at_start: loadavg(),
            cpu_busy_before: busy_fraction_over(Duration::from_secs(1)),
        }
    }
}

/// What a report starts with, on screen ([`ReportHead::print`]) and in its
/// JSON (flattened into the report).
#[derive(Clone, Debug, Serialize)]
pub struct ReportHead {
    /// The scenario's name.
    pub benchmark: &'static str,
    /// This program's command line.
    pub command: Vec<String>,
    /// The machine, described at the start.
    pub machine: Machine,
    /// /proc/loadavg at the end.
    pub loadavg_at_end: String,
    /// Versions of the tools (and the geomirror build).
    pub tools: std::collections::BTreeMap<&'static str, String>,
}

impl ReportHead {
    /// Prints the common header ([`Machine::print_header`]).
    pub fn print(&self) {
        self.machine.print_header(self.benchmark, &self.loadavg_at_end, &self.tools, &self.command);
    }
}

/// Machine-wide CPU time from the first line of /proc/stat, in seconds
/// summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    /// Time not idle: user, nice, system, irq, softirq, steal.
    pub busy: f64,
    /// All time, idle and iowait included.
    pub total: f64,
}

impl CpuTimes {
    /// Samples /proc/stat now; `None` if it cannot be read.
    pub fn sample() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_cpu_line(stat.lines().next()?, crate::procs::clock_ticks_per_second() as f64)
    }

    /// The busy fraction of all CPUs (0..=1) between `earlier` and `self`.
    pub fn busy_fraction_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total - earlier.total;
        (total > 0.0).then(|| ((self.busy - earlier.busy) / total).clamp(0.0, 1.0))
    }
}

/// Parses `cpu  user nice system idle iowait irq softirq steal guest guest_nice`
/// (ticks). Guest time is already included in user time.
fn parse_cpu_line(line: &str, ticks_per_second: f64) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<f64> = fields.take(8).map(|f| f.parse::<f64>().ok()).collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some(CpuTimes { busy: busy / ticks_per_second, total: (busy + v[3] + v[4]) / ticks_per_second })
}

/// The busy fraction of all CPUs over the next `interval` (blocks for it).
pub fn busy_fraction_over(interval: Duration) -> Option<f64> {
    let before = CpuTimes::sample()?;
    std::thread::sleep(interval);
    CpuTimes::sample()?.busy_fraction_since(&before)
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `2026-11-22T00:32:34Z` for `t` (whole seconds, UTC).
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // fio's own timestamp for "Sun Nov 22 00:32:34 2026".
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_795_307_554)), "2026-11-22T00:32:34Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn parses_proc_stat() {
        let t = parse_cpu_line("cpu  100 0 20 300 10 0 5 5 0 0", 100.0).unwrap();
        assert_eq!(t, CpuTimes { busy: 1.3, total: 4.4 });
        let later = CpuTimes { busy: 2.3, total: 8.4 };
        assert!((later.busy_fraction_since(&t).unwrap() - 0.25).abs() < 1e-9);
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8", 100.0), None);
        assert!(CpuTimes::sample().is_some());
    }
}
