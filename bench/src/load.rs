//! *Other load* around one measured job, for scenarios with several server
//! processes (two nodes, the WAN simulator, QEMU).
//!
//! single-site counts other load as machine-wide busy time minus the server
//! and fio. With two sites that over-counts: the loopback TCP traffic between
//! the nodes is processed in softirq context and the copy stream's
//! fdatasyncs in kernel worker threads, neither charged to our processes, so
//! an undisturbed run already shows 0.2–0.5 CPUs. Here other load is instead
//! the CPU time of *user-space processes that are not part of the
//! measurement* — every process in /proc except kernel threads, the
//! processes under test and this benchmark (whose children, fio, are
//! reaped into its own counters) — including the time of their reaped
//! children (so a cargo build's finished rustc processes count), per second
//! of wall time. That is what another engineer's build or test run shows
//! up as. Hypervisor steal time (/proc/stat) is recorded beside it: on this
//! VM it varies from 0 to 0.7 CPUs within minutes and QD1 latency follows it
//! (a run with 0.5 CPUs stolen can be 2× slower), so a run with more than
//! [`STEAL_FLAG`] CPUs stolen counts as disturbed too.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::procs::clock_ticks_per_second;

/// Other load (CPUs' worth) above which a run counts as disturbed.
pub const OTHER_LOAD_FLAG: f64 = 0.2;
/// Hypervisor steal (CPUs' worth) above which a run counts as disturbed.
pub const STEAL_FLAG: f64 = 0.3;
/// `PF_KTHREAD` in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Samples taken before a job.
pub struct Probe {
    ours: Vec<u32>,
    before: BTreeMap<u32, u64>,
    /// Context switches of each process under test at the start.
    switches_before: Vec<u64>,
    steal_before: Option<f64>,
    started: Instant,
}

/// What a job's surroundings used.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Load {
    /// Wall time of the job.
    pub wall_seconds: f64,
    /// CPU time of the processes under test in that time.
    pub servers_cpu_seconds: f64,
    /// CPUs' worth used by each process under test, in the order given.
    pub cpus_per_process: Vec<f64>,
    /// Context switches of each process under test in that time (its live
    /// threads'; see [`crate::procs::ProcUsage`]).
    pub switches_per_process: Vec<u64>,
    /// CPUs' worth of other user-space processes (see the module doc).
    pub other_cpus: Option<f64>,
    /// CPUs' worth of hypervisor steal time in that time.
    pub steal_cpus: Option<f64>,
}

impl Load {
    /// Whether other processes used more than [`OTHER_LOAD_FLAG`] CPUs or
    /// the hypervisor stole more than [`STEAL_FLAG`] CPUs.
    pub fn disturbed(&self) -> bool {
        self.other_cpus.is_some_and(|c| c > OTHER_LOAD_FLAG) || self.steal_cpus.is_some_and(|c| c > STEAL_FLAG)
    }
}

/// Flags and CPU ticks (utime + stime + cutime + cstime) from a
/// /proc/PID/stat line; fields are counted from the last `)` because the
/// command name may contain spaces and parentheses.
fn flags_and_ticks(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state); flags is field 9, utime..cstime 14..17.
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((num(6)?, num(11)? + num(12)? + num(13)? + num(14)?))
}

/// Ticks of every user-space process now (kernel threads left out).
fn user_processes() -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if let Some((flags, ticks)) = flags_and_ticks(&stat)
            && flags & PF_KTHREAD == 0
        {
            out.insert(pid, ticks);
        }
    }
    out
}

/// Ticks of other processes between two samples: each process alive at
/// the end counts its growth (all of it if it is new), ours and this one
/// excluded. A process that exited in between had its whole lifetime's
/// ticks added to its parent's children counters when it was reaped; the
/// part it had used before the first sample is taken off again, so that a
/// long-running child ending during the job is not counted in full.
fn other_ticks(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>, excluded: &[u32]) -> u64 {
    let grown: u64 = after
        .iter()
        .filter(|(pid, _)| !excluded.contains(pid))
        .map(|(pid, &t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    let exited: u64 = before.iter().filter(|(pid, _)| !after.contains_key(pid) && !excluded.contains(pid)).map(|(_, &t)| t).sum();
    grown.saturating_sub(exited)
}

fn steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    Some(*v.get(7)? / clock_ticks_per_second() as f64)
}

impl Probe {
    /// Samples every process now; `ours` are the processes under test.
    pub fn start(ours: &[u32]) -> Probe {
        let switches_before = switches_of(ours);
        let mut ours = ours.to_vec();
        ours.push(std::process::id());
        Probe { ours, before: user_processes(), switches_before, steal_before: steal_seconds(), started: Instant::now() }
    }

    /// Samples again.
    pub fn finish(self) -> Load {
        let wall_seconds = self.started.elapsed().as_secs_f64();
        let after = user_processes();
        let hz = clock_ticks_per_second() as f64;
        let servers = &self.ours[..self.ours.len() - 1]; // the last one is this process
        let used = |p: &u32| after.get(p).copied().unwrap_or(0).saturating_sub(self.before.get(p).copied().unwrap_or(0)) as f64 / hz;
        let servers_cpu_seconds = servers.iter().map(used).sum();
        let per_second = |x: f64| (wall_seconds > 0.0).then(|| x / wall_seconds);
        let cpus_per_process = servers.iter().map(|p| per_second(used(p)).unwrap_or(0.0)).collect();
        let cpus = std::thread::available_parallelism().map_or(2.0, |n| n.get() as f64);
        let other = (other_ticks(&self.before, &after, &self.ours) as f64 / hz).min(cpus * wall_seconds);
        let steal_cpus = match (self.steal_before, steal_seconds()) {
            (Some(b), Some(a)) => per_second(a - b),
            _ => None,
        };
        let switches_per_process =
            switches_of(servers).iter().zip(&self.switches_before).map(|(after, before)| after.saturating_sub(*before)).collect();
        Load { wall_seconds, servers_cpu_seconds, cpus_per_process, switches_per_process, other_cpus: per_second(other), steal_cpus }
    }
}

/// Measures one set of runs (`measure(attempt)`: e.g. one per system,
/// alternated) and measures it again while any run of it is `disturbed`, at
/// most `retries` times; returns every run, those of a repeated set passed
/// through `discard` (marked unused). `why` says on stderr what disturbed.
pub fn repeat_disturbed<R>(
    retries: u32,
    mut measure: impl FnMut(u32) -> anyhow::Result<Vec<R>>,
    disturbed: impl Fn(&R) -> bool,
    discard: impl Fn(&mut R),
    why: &str,
) -> anyhow::Result<Vec<R>> {
    let mut runs = Vec::new();
    for attempt in 0..=retries {
        let mut set = measure(attempt)?;
        let retry = set.iter().any(&disturbed) && attempt < retries;
        if retry {
            eprintln!("  {why}: discarding this pair and repeating");
            set.iter_mut().for_each(&discard);
        }
        runs.extend(set);
        if !retry {
            break;
        }
    }
    Ok(runs)
}

/// Context switches so far of each process (0 for one that is gone).
fn switches_of(pids: &[u32]) -> Vec<u64> {
    pids.iter().map(|&p| crate::procs::ProcUsage::sample(p).map_or(0, |u| u.context_switches)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flags_and_ticks() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime …
        let user = "6691 (my (odd) name) R 6689 6689 12648 0 -1 4194304 120 0 0 0 250 31 7 2 20 0 1 0 125592";
        assert_eq!(flags_and_ticks(user), Some((4194304, 290)));
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 5";
        assert_eq!(flags_and_ticks(kthread).map(|(f, _)| f & PF_KTHREAD != 0), Some(true));
        assert_eq!(flags_and_ticks("garbage"), None);
    }

    #[test]
    fn other_ticks_skip_ours_and_count_new_processes() {
        let before = BTreeMap::from([(1, 100), (2, 50), (3, 10)]);
        let after = BTreeMap::from([(1, 130), (2, 90), (4, 25)]); // 3 exited, 4 is new
        assert_eq!(other_ticks(&before, &after, &[2]), 30 + 25 - 10);
        assert_eq!(other_ticks(&before, &after, &[]), 30 + 40 + 25 - 10);
        // A child that ran 1000 ticks before the job and 5 during it, reaped by
        // its parent (pid 1) during the job: 5 ticks, not 1005.
        let before = BTreeMap::from([(1, 100), (7, 1000)]);
        let after = BTreeMap::from([(1, 100 + 1005)]);
        assert_eq!(other_ticks(&before, &after, &[]), 5);
        let l = Load { wall_seconds: 1.0, other_cpus: Some(0.3), ..Load::default() };
        assert!(l.disturbed());
        assert!(!Load { other_cpus: None, ..l.clone() }.disturbed());
        assert!(Load { other_cpus: None, steal_cpus: Some(0.5), ..l }.disturbed());
    }

    #[test]
    fn probes_this_machine() {
        let probe = Probe::start(&[1]);
        let load = probe.finish();
        assert!(load.wall_seconds >= 0.0 && load.servers_cpu_seconds >= 0.0);
        assert_eq!(load.cpus_per_process.len(), 1);
        assert!(load.other_cpus.is_some());
        assert!(!user_processes().is_empty());
    }
}
