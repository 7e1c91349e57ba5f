//! Child processes: long-running servers under test ([`Server`], killed on
//! drop), one-shot tools with a deadline ([`run_to_completion`]), free ports
//! and NBD readiness checks.
//!
//! [`ProcUsage`] samples a server's CPU time and context switches from
//! /proc, so that the cost per request can be compared between servers.
//!
//! Output of every child goes to files in the benchmark's temp dir, never to
//! pipes nobody reads, so a chatty child can never block; on failure the
//! tail of those files is put into the error.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// A port on 127.0.0.1 that was free a moment ago: bound to port 0, read
/// back, released. Another process could take it before the server binds;
/// on this single-user machine that race is accepted.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last `n` lines of `text`, for error messages.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() { "(empty)".to_string() } else { tail.join("\n") }
}

/// The first line `program --version` prints; when the program is missing,
/// a clear error ending with `install_hint` (e.g. "install it with …").
pub fn tool_version(program: &str, install_hint: &str) -> Result<String> {
    match Command::new(program).arg("--version").stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            Ok(String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{program}` is not installed or not on PATH; {install_hint}")
        }
        Err(e) => Err(e).with_context(|| format!("run `{program} --version`")),
    }
}

/// The Debian package of each external tool the benchmarks run.
const PACKAGES: &[(&str, &str)] = &[
    ("fio", "fio"),
    ("qemu-nbd", "qemu-utils"),
    ("qemu-io", "qemu-utils"),
    ("qemu-storage-daemon", "qemu-system-common` (or `qemu-storage-daemon"),
    ("nbdinfo", "libnbd-bin"),
    ("nbdcopy", "libnbd-bin"),
];

/// [`tool_version`] of each of `programs`, by name; a missing one fails
/// with the package to install.
pub fn tool_versions(programs: &[&'static str]) -> Result<std::collections::BTreeMap<&'static str, String>> {
    programs
        .iter()
        .map(|&program| {
            let package = PACKAGES.iter().find(|(p, _)| *p == program).map_or(program, |(_, package)| package);
            Ok((program, tool_version(program, &format!("install it with `apt-get install -y {package}`"))?))
        })
        .collect()
}

/// Which build of `binary` is measured: its modification time (UTC) and,
/// when the binary lies inside a git checkout (`target/release/`), `git
/// describe --always --dirty` of that checkout (the node may be rebuilt between runs while others work
/// in the same tree).
pub fn build_info(binary: &Path) -> String {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).map(crate::machine::rfc3339_utc).unwrap_or_else(|_| "unknown".into());
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty", "--exclude", "*"])
        .current_dir(binary.parent().filter(|p| p.is_dir()).unwrap_or(Path::new(".")))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match commit {
        Some(c) => format!("binary built {built}, source tree at {c}"),
        None => format!("binary built {built}"),
    }
}

/// CPU time and context switches a process has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcUsage {
    /// User + system CPU time of all its threads, dead ones included
    /// (/proc/PID/stat; clock-tick resolution, 10 ms here).
    pub cpu_seconds: f64,
    /// Voluntary + involuntary context switches of its live threads
    /// (/proc/PID/task/*/status; threads that exited are not counted).
    pub context_switches: u64,
    /// Live threads.
    pub threads: usize,
}

impl ProcUsage {
    /// Samples process `pid` now.
    pub fn sample(pid: u32) -> Result<ProcUsage> {
        let stat_path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&stat_path).with_context(|| format!("read {stat_path}"))?;
        let ticks = cpu_ticks(&stat).with_context(|| format!("parse {stat_path}"))?;
        let mut context_switches = 0;
        let mut threads = 0;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("list /proc/{pid}/task"))?;
        for task in tasks.flatten() {
            // A thread may exit between listing and reading: skip it.
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                context_switches += context_switches_of(&status);
                threads += 1;
            }
        }
        Ok(ProcUsage { cpu_seconds: ticks as f64 / clock_ticks_per_second() as f64, context_switches, threads })
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted
/// from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident set size of process `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn resident_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    resident_bytes_of(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// The `VmRSS:   1234 kB` line of a /proc/PID/status, in bytes.
fn resident_bytes_of(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sum of the `*_ctxt_switches` lines of a /proc/PID/status.
fn context_switches_of(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<u64>().ok())
        .sum()
}

/// `getconf CLK_TCK`, once; 100 (Linux's USER_HZ) if that fails.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Output of a finished one-shot command.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// All of its stdout.
    pub stdout: String,
    /// All of its stderr.
    pub stderr: String,
}

/// Runs `program args` to completion, killing it after `deadline`. Its
/// stdout/stderr go to `work_dir/<label>.stdout|.stderr` (overwritten) and
/// are returned.
///
/// The wait is a blocking `wait()` with a watchdog thread sleeping on a
/// channel, not a polling loop: the benchmark must not wake a CPU while the
/// system under test is measured.
pub fn run_to_completion(program: &str, args: &[String], work_dir: &Path, label: &str, deadline: Duration) -> Result<Finished> {
    let out_path = work_dir.join(format!("{label}.stdout"));
    let err_path = work_dir.join(format!("{label}.stderr"));
    let stdout = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let stderr = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("start `{program}`"))?;

    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(deadline) == Err(mpsc::RecvTimeoutError::Timeout) {
            // The child has not been reaped yet (the main thread is still in
            // wait()), so the pid is still ours.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            true
        } else {
            false
        }
    });
    let status = child.wait();
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    let status = status.with_context(|| format!("wait for `{program}`"))?;

    let read = |p: &Path| std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    if timed_out {
        bail!("`{program}` did not finish within {deadline:?} and was killed; stderr (tail):\n{}", tail_lines(&stderr, 15));
    }
    Ok(Finished { status, stdout, stderr })
}

/// Whether the systems under test are pinned (see [`pin_sites`]).
static PINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, pins every process started: the remote site's (a name with
/// `site-b`, any case) and the simulators (a name ending in `sim`) to CPU 1,
/// everything else (site A, the local systems, the client) to CPU 0. So the
/// replication work of a peer that would run elsewhere in a deployment does
/// not compete with site A and its client for a CPU.
pub fn pin_sites(on: bool) {
    PINNED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`pin_sites`] is on.
pub fn is_pinned() -> bool {
    PINNED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The CPU a process named `name` runs on, when pinned.
pub fn pinned_cpu(name: &str) -> Option<usize> {
    if !PINNED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let n = name.to_ascii_lowercase();
    Some(if n.contains("site-b") || n.ends_with("sim") { 1 } else { 0 })
}

/// Restricts the calling process to `cpu` (between fork and exec).
fn pin_self(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A server process under test. Killed (SIGKILL) and reaped when dropped,
/// including when the benchmark fails half-way.
pub struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub fn start(name: &str, program: &Path, args: &[String], log: PathBuf) -> Result<Server> {
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(file.try_clone().context("duplicate the log file handle")?).stderr(file);
        // If the benchmark itself is killed, its servers go too (the signal
        // follows the spawning thread, the benchmark's main thread).
        let cpu = pinned_cpu(name);
        // SAFETY: prctl and sched_setaffinity are async-signal-safe; nothing
        // else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(cpu) = cpu {
                    pin_self(cpu)?;
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("start {name} (`{} {}`)", program.display(), args.join(" ")))?;
        Ok(Server { name: name.to_string(), child, log })
    }

    /// Kills it at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's name, as used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last `n` lines the server logged.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        tail_lines(&text, n)
    }

    /// Fails with the server's log tail if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                bail!("{} exited unexpectedly ({status}); the last lines it logged:\n{}", self.name, self.log_tail(20))
            }
            Err(e) => Err(e).with_context(|| format!("check whether {} is running", self.name)),
        }
    }

    /// Waits until `uri` completes an NBD handshake (`nbdinfo --size`) and
    /// reports `expect_size` bytes. Fails early if the server exits, and
    /// after `timeout` with the last nbdinfo error and the server's log tail.
    pub fn wait_nbd_ready(&mut self, uri: &str, expect_size: u64, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive().with_context(|| format!("{} did not start", self.name))?;
            let out = Command::new("nbdinfo")
                .args(["--size", uri])
                .stdin(Stdio::null())
                .output()
                .context("run `nbdinfo` (apt-get install -y libnbd-bin)")?;
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                return match text.trim().parse::<u64>() {
                    Ok(size) if size == expect_size => Ok(()),
                    _ => bail!("{} exports {uri} with size `{}`, expected {expect_size} bytes", self.name, text.trim()),
                };
            }
            if started.elapsed() > timeout {
                let last_error = tail_lines(&String::from_utf8_lossy(&out.stderr), 3);
                bail!(
                    "{} did not accept an NBD handshake on {uri} within {timeout:?}; last nbdinfo error:\n{last_error}\nthe last lines {} logged:\n{}",
                    self.name,
                    self.name,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "(empty)");
    }

    #[test]
    fn proc_files_are_parsed() {
        let stat = "6691 (my (odd) name) R 6689 6689 12648 0 -1 4194304 120 0 0 0 250 31 0 0 20 0 1 0 125592";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(cpu_ticks("garbage"), None);
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(context_switches_of(status), 15);
        assert_eq!(resident_bytes_of("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert_eq!(resident_bytes_of(status), None);
        assert!(resident_bytes(std::process::id()).unwrap() > 0);
        let me = ProcUsage::sample(std::process::id()).unwrap();
        assert!(me.threads >= 1 && me.cpu_seconds >= 0.0);
    }

    #[test]
    fn a_hung_command_is_killed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let err = run_to_completion("sleep", &["30".into()], dir.path(), "sleep", Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("did not finish"), "{err}");
        let ok =
            run_to_completion("sh", &["-c".into(), "echo out; echo err >&2".into()], dir.path(), "sh", Duration::from_secs(10)).unwrap();
        assert!(ok.status.success());
        assert_eq!((ok.stdout.as_str(), ok.stderr.as_str()), ("out\n", "err\n"));
    }
}
