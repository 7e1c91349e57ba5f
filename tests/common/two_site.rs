//! Two real nodes (and optionally the WAN simulator between them) for the
//! multi-process tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{NodeProcess, geomirror_bin, http_get, run_ok};

/// Knobs of a two-site test setup.
#[derive(Clone, Debug)]
pub struct TwoSiteOptions {
    pub volume_size: &'static str,
    pub block_size: &'static str,
    pub extent_size: &'static str,
    pub release_after: &'static str,
    pub peer_timeout: &'static str,
    pub max_owned_extents: u32,
    pub predict_extents: u32,
    /// Round trip of a `geomirror sim` between the peers, if any.
    pub rtt: Option<&'static str>,
    /// Volume size at site B if it should differ (a misconfiguration).
    pub b_volume_size: Option<&'static str>,
    /// Run a witness (each node reaches it through its own `geomirror sim`,
    /// 2 ms RTT; lease 1.5 s, drift bound 200 ms, heartbeat timeout 1 s).
    pub witness: bool,
    /// The volume's replication mode and peer-loss policy (both sites).
    pub mode: &'static str,
    pub on_peer_loss: &'static str,
    /// TLS for hosts at both sites (`optional` or `required`; client
    /// certificates from the pair's CA required): certificates for a host
    /// named `host1` are made too, in `certs/host1/` as QEMU and libnbd want them.
    pub nbd_tls: Option<&'static str>,
}

impl Default for TwoSiteOptions {
    fn default() -> Self {
        TwoSiteOptions {
            volume_size: "64MiB",
            block_size: "4KiB",
            extent_size: "1MiB",
            release_after: "30s",
            peer_timeout: "3s",
            max_owned_extents: 64,
            predict_extents: 4,
            rtt: None,
            b_volume_size: None,
            witness: false,
            mode: "async",
            on_peer_loss: "suspend",
            nbd_tls: None,
        }
    }
}

/// A free loopback port (bound then released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `geomirror sim` process.
pub struct SimProcess {
    child: Child,
    pub listen: SocketAddr,
    pub control: SocketAddr,
}

impl SimProcess {
    pub fn start(upstream: SocketAddr, rtt: &str) -> SimProcess {
        let mut command = Command::new(geomirror_bin());
        command
            .args(["sim", "--listen", "127.0.0.1:0", "--to", &upstream.to_string(), "--rtt", rtt, "--control", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        super::die_with_parent(&mut command);
        let mut child = command.spawn().expect("spawn geomirror sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name}= in `{line}`")) + name.len() + 1;
            line[start..].split_whitespace().next().unwrap().parse().unwrap()
        };
        SimProcess { listen: field("listen"), control: field("control"), child }
    }

    /// Runs `geomirror sim <args> --control ADDR`.
    pub fn control(&self, args: &[&str]) {
        let mut all: Vec<String> = vec!["sim".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.push("--control".into());
        all.push(self.control.to_string());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run_ok(30, geomirror_bin().to_str().unwrap(), &refs);
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `geomirror witness` process.
pub struct WitnessProcess {
    child: std::process::Child,
    pub listen: SocketAddr,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub config: PathBuf,
}

impl WitnessProcess {
    pub fn start(config: &Path, listen: SocketAddr) -> WitnessProcess {
        let s = super::spawn_ready("witness", config, "witness ready");
        WitnessProcess { child: s.child, listen, logs: s.logs, config: config.to_path_buf() }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The witness of a [`TwoSites`] and the simulators on the nodes' links to it.
pub struct WitnessSetup {
    pub process: WitnessProcess,
    /// Site A's link to the witness.
    pub sim_a: SimProcess,
    /// Site B's link to the witness.
    pub sim_b: SimProcess,
}

impl WitnessSetup {
    /// Restarts the witness from its config (after a kill).
    pub fn restart(&mut self) {
        let (config, listen) = (self.process.config.clone(), self.process.listen);
        self.process = WitnessProcess::start(&config, listen);
    }
}

/// Site A (dials) and site B (accepts), each with one volume `vol0`.
pub struct TwoSites {
    pub dir: tempfile::TempDir,
    pub a: NodeProcess,
    pub b: NodeProcess,
    pub sim: Option<SimProcess>,
    pub a_config: PathBuf,
    pub b_config: PathBuf,
    pub witness: Option<WitnessSetup>,
}

/// One site's end of the pair, for its config file.
struct SiteEnds<'a> {
    own: &'a str,
    peer: &'a str,
    listen: &'a str,
    connect: &'a str,
    size: &'a str,
    /// Where this site reaches the witness.
    witness: Option<SocketAddr>,
}

fn site_config(dir: &Path, site: SiteEnds<'_>, o: &TwoSiteOptions) -> String {
    let SiteEnds { own, peer, listen, connect, size, witness } = site;
    let witness = witness.map_or(String::new(), |w| {
        format!("[witness]\nname = \"witness\"\nconnect = \"{w}\"\nlease = \"1500ms\"\nmax_clock_drift = \"200ms\"\n")
    });
    let certs_dir = dir.join("certs");
    let nbd_tls = o.nbd_tls.map_or(String::new(), |mode| {
        format!(
            "tls = \"{mode}\"\ntls_cert = \"{c}/{own}.pem\"\ntls_key = \"{c}/{own}-key.pem\"\ntls_client_ca = \"{c}/ca.pem\"\n",
            c = certs_dir.display()
        )
    });
    format!(
        "[node]\nname = \"{own}\"\ndata_dir = \"{data}\"\n[nbd]\nlisten = \"127.0.0.1:0\"\n{nbd_tls}[admin]\nlisten = \"127.0.0.1:0\"\n{witness}\
         [peer]\nname = \"{peer}\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\npeer_timeout = \"{timeout}\"\nheartbeat_interval = \"250ms\"\nheartbeat_timeout = \"1s\"\n\
         [tls]\nca = \"{certs}/ca.pem\"\ncert = \"{certs}/{own}.pem\"\nkey = \"{certs}/{own}-key.pem\"\n\
         [[volume]]\nname = \"vol0\"\nsize = \"{size}\"\nblock_size = \"{block}\"\nextent_size = \"{extent}\"\nmax_owned_extents = {max}\npredict_extents = {predict}\nrelease_after = \"{release}\"\n\
         mode = \"{mode}\"\non_peer_loss = \"{policy}\"\n",
        data = dir.join(format!("data-{own}")).display(),
        certs = dir.join("certs").display(),
        timeout = o.peer_timeout,
        extent = o.extent_size,
        block = o.block_size,
        max = o.max_owned_extents,
        predict = o.predict_extents,
        release = o.release_after,
        mode = o.mode,
        policy = o.on_peer_loss,
    )
}

impl TwoSites {
    pub fn start(o: TwoSiteOptions) -> TwoSites {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let bin = geomirror_bin();
        let mut cert_args = vec!["certs", "--out", certs.to_str().unwrap(), "--node", "site-a", "--node", "site-b"];
        if o.witness {
            cert_args.extend(["--node", "witness"]);
        }
        if o.nbd_tls.is_some() {
            // certs/host1/: the layout QEMU's tls-creds-x509 and libnbd's tls-certificates read.
            cert_args.extend(["--host", "host1"]);
        }
        run_ok(30, bin.to_str().unwrap(), &cert_args);
        let witness = o.witness.then(|| {
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let config = dir.path().join("witness.toml");
            std::fs::write(
                &config,
                format!(
                    "[node]\nname = \"witness\"\ndata_dir = \"{}\"\n[witness]\nlisten = \"{listen}\"\nnodes = [\"site-a\", \"site-b\"]\n\
                     [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/witness.pem\"\nkey = \"{c}/witness-key.pem\"\n",
                    dir.path().join("data-witness").display(),
                    c = certs.display()
                ),
            )
            .unwrap();
            let process = WitnessProcess::start(&config, listen);
            WitnessSetup { process, sim_a: SimProcess::start(listen, "2ms"), sim_b: SimProcess::start(listen, "2ms") }
        });
        let b_peer = format!("127.0.0.1:{}", free_port());
        let b_config = dir.path().join("site-b.toml");
        let b_size = o.b_volume_size.unwrap_or(o.volume_size);
        let wb = witness.as_ref().map(|w| w.sim_b.listen);
        std::fs::write(
            &b_config,
            site_config(
                dir.path(),
                SiteEnds { own: "site-b", peer: "site-a", listen: &b_peer, connect: "127.0.0.1:9", size: b_size, witness: wb },
                &o,
            ),
        )
        .unwrap();
        let b = NodeProcess::start(&b_config);
        let sim = o.rtt.map(|rtt| SimProcess::start(b_peer.parse().unwrap(), rtt));
        let connect = sim.as_ref().map(|s| s.listen.to_string()).unwrap_or(b_peer);
        let a_config = dir.path().join("site-a.toml");
        let wa = witness.as_ref().map(|w| w.sim_a.listen);
        std::fs::write(
            &a_config,
            site_config(
                dir.path(),
                SiteEnds { own: "site-a", peer: "site-b", listen: "127.0.0.1:0", connect: &connect, size: o.volume_size, witness: wa },
                &o,
            ),
        )
        .unwrap();
        let a = NodeProcess::start(&a_config);
        let sites = TwoSites { dir, a, b, sim, a_config, b_config, witness };
        if o.b_volume_size.is_none() {
            sites.wait_link_up(Duration::from_secs(15));
        }
        if sites.witness.is_some() {
            let connected = |n: &NodeProcess| status(n)["standing"]["witness"] == "connected";
            assert!(eventually(Duration::from_secs(15), || connected(&sites.a) && connected(&sites.b)), "the witness link did not come up");
        }
        sites
    }

    /// Waits until both nodes report the peer link up.
    pub fn wait_link_up(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if link_state(&self.a) == "up" && link_state(&self.b) == "up" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("peer link did not come up; A log:\n{}\nB log:\n{}", self.a.logs().join("\n"), self.b.logs().join("\n"));
    }

    /// Restarts site A from its config (after a kill).
    pub fn restart_a(&mut self) {
        self.a = NodeProcess::start(&self.a_config);
    }

    /// Restarts site B from its config (after a kill).
    pub fn restart_b(&mut self) {
        self.b = NodeProcess::start(&self.b_config);
    }
}

/// The node's health from `/status` (`connected`, `survivor`, `fenced`, ...).
pub fn health(node: &NodeProcess) -> String {
    status(node)["standing"]["health"].as_str().unwrap_or("none").to_string()
}

/// The node's peer link state from `/status`.
pub fn link_state(node: &NodeProcess) -> String {
    status(node)["peer"]["link"].as_str().unwrap_or("none").to_string()
}

/// `/status` as JSON.
pub fn status(node: &NodeProcess) -> serde_json::Value {
    serde_json::from_str(&http_get(node.admin, "/status")).expect("status JSON")
}

/// A replication figure of vol0 from `/status`.
pub fn figure(node: &NodeProcess, name: &str) -> u64 {
    status(node)["volumes"][0]["replication"][name].as_u64().unwrap_or_else(|| panic!("no figure {name}"))
}

/// Polls until `f` holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
