//! Shared helpers of the multi-process tests: spawn a node, wait until it is
//! ready, run real NBD clients with deadlines, a small NBD client of our own.
#![allow(dead_code)]

pub mod demo;
pub mod linearizability;
pub mod nbd_client;
pub mod two_site;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// The binary under test.
pub fn geomirror_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_geomirror"))
}

/// Fails the test with a clear message if an external tool is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success());
    assert!(matches!(found, Ok(true)), "`{tool}` is not installed: run the README's test command (scripts/test.sh), which installs it");
}

/// A config for a single node with one volume; ports 0 (ephemeral).
pub fn single_node_config(data_dir: &Path, volume: &str, size: &str) -> String {
    format!(
        "[node]\nname = \"site-a\"\ndata_dir = \"{}\"\n[nbd]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[volume]]\nname = \"{volume}\"\nsize = \"{size}\"\n",
        data_dir.display()
    )
}

/// A running node process; killed (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Child,
    pub nbd: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

/// A `geomirror` process started and ready: the child, its log lines, and
/// the line that said it was ready.
pub struct Spawned {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub ready_line: String,
}

/// Starts `geomirror <command> --config PATH` and waits for a log line
/// containing `marker`.
pub fn spawn_ready(command_name: &str, config_path: &Path, marker: &'static str) -> Spawned {
    let mut command = Command::new(geomirror_bin());
    command
        .args([command_name, "--config"])
        .arg(config_path)
        .env("RUST_LOG", std::env::var("GEOMIRROR_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    die_with_parent(&mut command);
    let mut child = command.spawn().expect("spawn geomirror");
    let stderr = child.stderr.take().expect("stderr is piped");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = ready_tx.take_if(|_| line.contains(marker)) {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(ready_line) => Spawned { child, logs, ready_line },
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("geomirror {command_name} did not become ready; log:\n{}", logs.lock().unwrap().join("\n"));
        }
    }
}

impl NodeProcess {
    /// Starts `geomirror node --config PATH` and waits for its "node ready" line.
    pub fn start(config_path: &Path) -> NodeProcess {
        let Spawned { child, logs, ready_line: line } = spawn_ready("node", config_path, "node ready");
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name}= in {line}")) + name.len() + 1;
            line[start..].split_whitespace().next().unwrap().parse().unwrap()
        };
        NodeProcess { nbd: field("nbd"), admin: field("admin"), child, logs }
    }

    /// Starts `geomirror node --config PATH`, expecting it to fail at start;
    /// returns its log.
    pub fn start_fails(config_path: &Path) -> String {
        let out = Command::new(geomirror_bin()).args(["node", "--config"]).arg(config_path).output().expect("run geomirror node");
        assert!(!out.status.success(), "the node started: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

impl NodeProcess {
    /// NBD URI of an export.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.nbd)
    }

    /// Kills the node with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to 10 s for a clean exit; returns its success.
    pub fn terminate(&mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill9();
        false
    }

    /// Everything the node logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Fails if the node logged ERROR or WARN lines other than those allowed.
    pub fn assert_no_unexpected_warnings(&self, allowed: &[&str]) {
        let bad: Vec<String> = self
            .logs()
            .into_iter()
            .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
            .filter(|l| !allowed.iter().any(|a| l.contains(a)))
            .collect();
        assert!(bad.is_empty(), "unexpected warnings or errors in the node log:\n{}", bad.join("\n"));
    }

    /// `GET path` on the admin listener; returns the body.
    pub fn admin_get(&self, path: &str) -> String {
        http_get(self.admin, path)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Makes a spawned process get SIGKILL if the test process dies first
/// (a failed test must not leave nodes running).
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A minimal HTTP/1.1 GET (loopback, `Connection: close`); returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// `GET path` from `addr`: the body of a 200 answer, or why there is none
/// (a node that is down, another status).
pub fn try_http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| format!("read: {e}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response.lines().next().unwrap_or("").to_string());
    }
    Ok(response.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string()))
}

/// Runs a program with a deadline (coreutils `timeout`), capturing output.
pub fn run_with_deadline(seconds: u32, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("--signal=KILL")
        .arg(seconds.to_string())
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Runs a program that must succeed; returns its stdout.
pub fn run_ok(seconds: u32, program: &str, args: &[&str]) -> String {
    let out = run_with_deadline(seconds, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-io` commands against an NBD URI; every command must succeed
/// (qemu-io prints "Pattern verification failed" and errors but exits 0, so
/// the output is checked too).
pub fn qemu_io(uri: &str, commands: &[String]) -> String {
    let (ok, text) = qemu_io_try(uri, commands);
    assert!(ok, "qemu-io {commands:?} reported a failure:\n{text}");
    text
}

/// Runs `qemu-io` commands against an NBD URI; returns whether every one
/// succeeded (exit status and output checked) and the output.
pub fn qemu_io_try(uri: &str, commands: &[String]) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    let out = run_with_deadline(60, "qemu-io", &args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error") && !text.contains("Error");
    (ok, format!("({}) {text}", out.status))
}

/// A node with one volume in a fresh temp dir.
pub struct SingleNode {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub node: NodeProcess,
}

impl SingleNode {
    pub fn start(volume: &str, size: &str) -> SingleNode {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(&config, single_node_config(&dir.path().join("data"), volume, size)).unwrap();
        let node = NodeProcess::start(&config);
        SingleNode { dir, config, node }
    }
}
