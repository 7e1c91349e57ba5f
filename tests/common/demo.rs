//! The two-site demo as the README's first command starts it, for the
//! tests that drive it (`tests/demo.rs`, `tests/top.rs`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::two_site::free_port;
use super::{die_with_parent, geomirror_bin, try_http_get};

/// A running demo: the process, its stdin (commands), its printed lines,
/// and the addresses it was given (NBD A, NBD B, admin A, admin B, control).
pub struct Demo {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pub printed: String,
    pub ports: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Demo {
    pub fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<String> = (0..5).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let mut command = Command::new(geomirror_bin());
        command
            .args(["demo", "--dir", dir.path().to_str().unwrap(), "--volume", "vol0:64MiB", "--rtt", "10ms"])
            .args(["--nbd-a", &ports[0], "--nbd-b", &ports[1], "--admin-a", &ports[2], "--admin-b", &ports[3], "--sim-control", &ports[4]])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn the demo");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo { child, stdin, lines, printed: String::new(), ports, dir };
        demo.wait_for("Ctrl-C stops the demo", Duration::from_secs(60));
        demo
    }

    /// Waits until the demo prints a line containing `text`.
    pub fn wait_for(&mut self, text: &str, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.printed.contains(text) {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push_str(&line);
                    self.printed.push('\n');
                }
                Err(_) => panic!("the demo did not print `{text}` within {limit:?}:\n{}", self.printed),
            }
        }
    }

    /// Types a command into the demo.
    pub fn type_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the demo");
    }

    /// A node's health from its `/status` (`unreachable` while it is down).
    pub fn health(&self, admin: &str) -> String {
        let Ok(body) = try_http_get(admin.parse().unwrap(), "/status") else { return "unreachable".into() };
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status["standing"]["health"].as_str().unwrap_or("unreachable").to_string()
    }

    /// Ctrl-C; the demo exits cleanly and its nodes log that they stopped.
    pub fn stop(mut self) {
        self.stop_and_wait();
        for site in ["site-a", "site-b"] {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{site}.log"))).unwrap();
            assert!(log.contains("stopped"), "{site} stopped cleanly:\n{log}");
        }
    }

    pub fn stop_and_wait(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let until = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < until, "the demo did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "the demo exits cleanly: {status}");
    }
}

impl Drop for Demo {
    /// A failed test still stops the demo and everything it runs.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
