//! Two geomirror sites with the WAN simulator between their peer links, as
//! the README's "Two sites" describes: `geomirror certs` for a CA and one
//! certificate per node, site B started first (it accepts: "site-b" sorts
//! after "site-a"), then `geomirror sim --to <B's peer listen>`, then site A
//! with `connect` = the simulator. Ready when both `/status` show the peer
//! link `up` and both NBD servers answer a handshake.
//!
//! Every volume in [`VolumeSpec`] is configured identically at both sites,
//! in the same order.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use geomirror_config::ReplicationMode;

use crate::node_status::{self, Metrics, NodeStatus};
use crate::procs::{self, Server};
use crate::sim::Sim;

/// How long a node may take to serve NBD and to see its peer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `[[volume]]` of both sites.
#[derive(Clone, Debug)]
pub struct VolumeSpec {
    /// Export name.
    pub name: &'static str,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Extent size in bytes.
    pub extent_bytes: u64,
    /// `predict_extents`.
    pub predict_extents: u32,
    /// `max_owned_extents`.
    pub max_owned_extents: u32,
    /// `release_after`, e.g. `30s`.
    pub release_after: &'static str,
    /// `mode`; written to the config only when not the default (`async`),
    /// so that existing callers' configs stay as they were.
    pub mode: ReplicationMode,
}

impl VolumeSpec {
    /// A 1 GiB volume with the product defaults (1 MiB extents, limit 1024,
    /// predict 8, release after 30 s, async).
    pub const fn default_named(name: &'static str) -> VolumeSpec {
        VolumeSpec {
            name,
            size_bytes: 1 << 30,
            extent_bytes: EXTENT_BYTES,
            predict_extents: 8,
            max_owned_extents: 1024,
            release_after: "30s",
            mode: ReplicationMode::Async,
        }
    }
}

/// Extent size of a volume by default (the product's).
pub const EXTENT_BYTES: u64 = 1 << 20;

/// One node of the pair.
pub struct Node {
    /// "site-a" or "site-b".
    pub name: String,
    /// `127.0.0.1:PORT` of its NBD server.
    pub nbd: String,
    /// `127.0.0.1:PORT` of its admin endpoint.
    pub admin: String,
    /// The process.
    pub server: Server,
    /// Its config file (to start it again after a kill).
    pub config: std::path::PathBuf,
}

impl Node {
    /// Kills the node (SIGKILL: nothing is flushed, as when a site dies).
    pub fn kill9(&mut self) {
        self.server.kill();
    }

    /// Starts the node again from its config (after [`Node::kill9`]), its
    /// log in `log`; returns once its admin endpoint answers.
    pub fn restart(&mut self, binary: &Path, log: std::path::PathBuf) -> Result<()> {
        let args = vec!["node".to_string(), "--config".to_string(), self.config.display().to_string()];
        self.server = Server::start(&self.name, binary, &args, log)?;
        let started = std::time::Instant::now();
        while NodeStatus::fetch(&self.admin).is_err() {
            self.server.check_alive()?;
            if started.elapsed() > READY_TIMEOUT {
                bail!("{}: the admin endpoint did not answer within {READY_TIMEOUT:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// `nbd://…/export`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.nbd)
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<NodeStatus> {
        NodeStatus::fetch(&self.admin).with_context(|| format!("read {}'s /status", self.name))
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        Metrics::fetch(&self.admin).with_context(|| format!("read {}'s /metrics", self.name))
    }

    /// Waits until nothing written at this node to `volume` is un-durable at
    /// the peer (polled every 10 ms, at most `timeout`); returns how long.
    pub fn wait_durable(&self, volume: &str, timeout: Duration) -> Result<Duration> {
        let what = format!("{}: volume {volume} durable at the peer", self.name);
        let (_, took) = node_status::wait_for(&self.admin, &what, Duration::from_millis(10), timeout, |s| {
            Ok(s.replication(volume)?.not_durable_at_peer_bytes == 0)
        })?;
        Ok(took)
    }
}

/// Site A, site B and the simulator (and the witness, if any); all killed
/// when dropped.
pub struct Pair {
    /// Site A (dials the simulator).
    pub a: Node,
    /// Site B (accepts).
    pub b: Node,
    /// The simulator between them; "ab" is A → B.
    pub sim: Sim,
    /// The witness (both sites reach it directly, not through the simulator).
    pub witness: Option<Server>,
}

impl Pair {
    /// The pids of both nodes and the simulator (for [`crate::load`]).
    pub fn pids(&self) -> Vec<u32> {
        vec![self.a.server.pid(), self.b.server.pid(), self.sim.server.pid()]
    }

    /// Fails with the log tail of any process that exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.a.server.check_alive()?;
        self.b.server.check_alive()?;
        self.sim.server.check_alive()
    }
}

/// The ports and names of one site's config.
pub struct SiteConfig<'a> {
    /// Where this node reaches the witness (None: no witness).
    pub witness: Option<&'a str>,
    /// This node's name.
    pub name: &'a str,
    /// The peer's name.
    pub peer: &'a str,
    /// NBD port.
    pub nbd_port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// Where this node accepts the peer.
    pub peer_listen: u16,
    /// Where this node reaches the peer (the simulator, for site A).
    pub peer_connect: &'a str,
}

/// The TOML of one site; certificates and data live under `dir`.
pub fn node_config(site: &SiteConfig<'_>, dir: &Path, volumes: &[VolumeSpec]) -> String {
    let SiteConfig { name, peer, nbd_port, admin_port, peer_listen, peer_connect, witness } = site;
    let d = dir.display();
    let mut toml = format!(
        r#"[node]
name = "{name}"
data_dir = "{d}/data-{name}"

[nbd]
listen = "127.0.0.1:{nbd_port}"

[admin]
listen = "127.0.0.1:{admin_port}"

[peer]
name = "{peer}"
listen = "127.0.0.1:{peer_listen}"
connect = "{peer_connect}"
peer_timeout = "10s"

[tls]
ca = "{d}/certs/ca.pem"
cert = "{d}/certs/{name}.pem"
key = "{d}/certs/{name}-key.pem"
"#
    );
    if let Some(witness) = witness {
        // The product's defaults for the lease and the drift bound.
        toml.push_str(&format!("\n[witness]\nname = \"witness\"\nconnect = \"{witness}\"\n"));
    }
    for v in volumes {
        toml.push_str(&format!(
            "\n[[volume]]\nname = \"{}\"\nsize = \"{}\"\nextent_size = \"{}\"\nmax_owned_extents = {}\npredict_extents = {}\nrelease_after = \"{}\"\n",
            v.name, v.size_bytes, v.extent_bytes, v.max_owned_extents, v.predict_extents, v.release_after
        ));
        if v.mode != ReplicationMode::Async {
            toml.push_str(&format!("mode = \"{}\"\n", v.mode.as_str()));
        }
    }
    toml
}

/// Starts the pair in `dir` (created) with the simulator at `rtt` and
/// `bandwidth` (bits/s, `None` unlimited) and waits until it is ready.
pub fn start(binary: &Path, dir: &Path, volumes: &[VolumeSpec], rtt: Duration, bandwidth: Option<u64>) -> Result<Pair> {
    start_with(binary, dir, volumes, rtt, bandwidth, false)
}

/// [`start`], with a witness (`geomirror witness`) when `witness`: both
/// sites hold leases from it with the product's default settings.
pub fn start_with(binary: &Path, dir: &Path, volumes: &[VolumeSpec], rtt: Duration, bandwidth: Option<u64>, witness: bool) -> Result<Pair> {
    if !binary.is_file() {
        bail!(
            "geomirror binary not found at {}; build it with `cargo build --release -p geomirror` or pass --geomirror PATH",
            binary.display()
        );
    }
    if volumes.is_empty() {
        bail!("a pair needs at least one volume");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let certs = dir.join("certs");
    let bin = binary.display().to_string();
    let mut args: Vec<String> =
        ["certs", "--out", &certs.display().to_string(), "--node", "site-a", "--node", "site-b"].iter().map(|s| s.to_string()).collect();
    if witness {
        args.extend(["--node".to_string(), "witness".to_string()]);
    }
    let out = procs::run_to_completion(&bin, &args, dir, "certs", Duration::from_secs(60))?;
    if !out.status.success() {
        bail!("`geomirror certs` failed ({}): {}", out.status, procs::tail_lines(&out.stderr, 10));
    }
    let witness_listen = format!("127.0.0.1:{}", procs::free_port()?);
    let witness_server = match witness {
        false => None,
        true => {
            let config = dir.join("witness.toml");
            let d = dir.display();
            std::fs::write(
                &config,
                format!(
                    "[node]\nname = \"witness\"\ndata_dir = \"{d}/data-witness\"\n\n[witness]\nlisten = \"{witness_listen}\"\n\
                     nodes = [\"site-a\", \"site-b\"]\n\n[tls]\nca = \"{d}/certs/ca.pem\"\ncert = \"{d}/certs/witness.pem\"\n\
                     key = \"{d}/certs/witness-key.pem\"\n"
                ),
            )?;
            let args = vec!["witness".to_string(), "--config".to_string(), config.display().to_string()];
            Some(Server::start("witness", binary, &args, dir.join("witness.log"))?)
        }
    };
    let witness_at = witness.then_some(witness_listen.as_str());

    let (b_nbd, b_admin, b_peer, b_unused) = (procs::free_port()?, procs::free_port()?, procs::free_port()?, procs::free_port()?);
    let b_config = dir.join("site-b.toml");
    std::fs::write(
        &b_config,
        node_config(
            &SiteConfig {
                name: "site-b",
                peer: "site-a",
                nbd_port: b_nbd,
                admin_port: b_admin,
                peer_listen: b_peer,
                peer_connect: &format!("127.0.0.1:{b_unused}"),
                witness: witness_at,
            },
            dir,
            volumes,
        ),
    )?;
    let node_args = |config: &Path| vec!["node".to_string(), "--config".to_string(), config.display().to_string()];
    let mut b_server = Server::start("site-b", binary, &node_args(&b_config), dir.join("site-b.log"))?;
    let first = volumes[0].name;
    b_server.wait_nbd_ready(&format!("nbd://127.0.0.1:{b_nbd}/{first}"), volumes[0].size_bytes, READY_TIMEOUT)?;

    let sim = Sim::start(binary, "sim", &format!("127.0.0.1:{b_peer}"), rtt, bandwidth, dir)?;

    let (a_nbd, a_admin, a_peer) = (procs::free_port()?, procs::free_port()?, procs::free_port()?);
    let a_config = dir.join("site-a.toml");
    std::fs::write(
        &a_config,
        node_config(
            &SiteConfig {
                name: "site-a",
                peer: "site-b",
                nbd_port: a_nbd,
                admin_port: a_admin,
                peer_listen: a_peer,
                peer_connect: &sim.listen,
                witness: witness_at,
            },
            dir,
            volumes,
        ),
    )?;
    let mut a_server = Server::start("site-a", binary, &node_args(&a_config), dir.join("site-a.log"))?;
    a_server.wait_nbd_ready(&format!("nbd://127.0.0.1:{a_nbd}/{first}"), volumes[0].size_bytes, READY_TIMEOUT)?;

    let a = Node {
        name: "site-a".into(),
        nbd: format!("127.0.0.1:{a_nbd}"),
        admin: format!("127.0.0.1:{a_admin}"),
        server: a_server,
        config: a_config,
    };
    let b = Node {
        name: "site-b".into(),
        nbd: format!("127.0.0.1:{b_nbd}"),
        admin: format!("127.0.0.1:{b_admin}"),
        server: b_server,
        config: b_config,
    };
    for node in [&a, &b] {
        node_status::wait_for(&node.admin, &format!("{}: peer link up", node.name), Duration::from_millis(50), READY_TIMEOUT, |s| {
            for v in &s.volumes {
                if let Some(problem) = v.replication.as_ref().and_then(|r| r.problem.as_ref()) {
                    bail!("{}: volume {} is not served: {problem}", node.name, v.name);
                }
            }
            Ok(s.link_up())
        })
        .with_context(|| format!("the last lines {} logged:\n{}", node.name, node.server.log_tail(15)))?;
    }
    Ok(Pair { a, b, sim, witness: witness_server })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_peer_tls_and_every_volume() {
        let vols = [
            VolumeSpec::default_named("p0"),
            VolumeSpec { predict_extents: 64, release_after: "5m", ..VolumeSpec::default_named("p64") },
            VolumeSpec { mode: ReplicationMode::SyncMemory, ..VolumeSpec::default_named("sm") },
        ];
        let site = SiteConfig {
            name: "site-a",
            peer: "site-b",
            nbd_port: 1,
            admin_port: 2,
            peer_listen: 3,
            peer_connect: "127.0.0.1:9",
            witness: None,
        };
        let toml = node_config(&site, Path::new("/t"), &vols);
        for want in [
            "name = \"site-a\"",
            "data_dir = \"/t/data-site-a\"",
            "listen = \"127.0.0.1:1\"",
            "listen = \"127.0.0.1:2\"",
            "[peer]\nname = \"site-b\"\nlisten = \"127.0.0.1:3\"\nconnect = \"127.0.0.1:9\"",
            "cert = \"/t/certs/site-a.pem\"",
            "key = \"/t/certs/site-a-key.pem\"",
            "name = \"p0\"\nsize = \"1073741824\"\nextent_size = \"1048576\"\nmax_owned_extents = 1024\npredict_extents = 8\nrelease_after = \"30s\"",
            "name = \"p64\"",
            "predict_extents = 64\nrelease_after = \"5m\"",
            "name = \"sm\"\nsize = \"1073741824\"\nextent_size = \"1048576\"\nmax_owned_extents = 1024\npredict_extents = 8\nrelease_after = \"30s\"\nmode = \"sync-memory\"\n",
        ] {
            assert!(toml.contains(want), "missing {want:?} in\n{toml}");
        }
        assert_eq!(toml.matches("[[volume]]").count(), 3);
        assert_eq!(toml.matches("mode = ").count(), 1, "async, the default, is not written");
    }
}
