//! Typed, validated TOML configuration for a geomirror node.
//!
//! [`NodeConfig::load`] reads a file, [`NodeConfig::from_toml`] parses text;
//! both reject unknown keys and check relations between values (sizes are
//! powers of two where the store needs them, timeouts above heartbeats, no
//! duplicate volume names), and every error names the file, the key and what
//! is wrong. Relative paths (`data_dir`, TLS files) are resolved against the
//! directory of the config file.
//!
//! This crate depends on no other crate of the project and does no I/O beyond
//! reading the file: it does not create directories or check certificates.

#![warn(missing_docs)]

pub mod defaults;
mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use units::{ByteSize, HumanDuration};

/// A configuration error; its `Display` names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not fit the schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line, column and key).
        message: String,
    },
    /// A value is out of its allowed range or conflicts with another one.
    #[error("config file {path}: key `{key}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key, e.g. `volume[0].size`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// How a volume's writes are mirrored to the peer (DESIGN.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// Acknowledge locally; the host waits for the WAN only on claims,
    /// handovers and pulls.
    #[default]
    Async,
    /// Acknowledge once the peer holds the write in memory.
    SyncMemory,
    /// Acknowledge once the write is durable at both sites.
    Sync,
}

impl ReplicationMode {
    /// The name used in the config file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::Async => "async",
            ReplicationMode::SyncMemory => "sync-memory",
            ReplicationMode::Sync => "sync",
        }
    }
}

impl std::str::FromStr for ReplicationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async" => Ok(ReplicationMode::Async),
            "sync-memory" => Ok(ReplicationMode::SyncMemory),
            "sync" => Ok(ReplicationMode::Sync),
            other => Err(format!("unknown mode `{other}`: expected async, sync-memory or sync")),
        }
    }
}

/// What a `sync` or `sync-memory` volume does while the peer is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PeerLossPolicy {
    /// Writes wait for the peer up to `peer.peer_timeout`, then fail with
    /// EIO: nothing is acknowledged that only this site holds.
    #[default]
    Suspend,
    /// Writes carry on as in `async` (logged, shown in status and metrics);
    /// the configured mode returns once the peer has caught up.
    Degrade,
}

/// The whole configuration of one node, validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity and storage location of this node.
    pub node: NodeSection,
    /// The NBD listener for hosts of this site.
    #[serde(default)]
    pub nbd: NbdSection,
    /// The admin HTTP listener (`/metrics`, `/status`).
    #[serde(default)]
    pub admin: AdminSection,
    /// The peer node at the other site; absent for a single-site node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerSection>,
    /// Certificates for the peer link; required with `[peer]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    /// The witness (two-site nodes; optional: without one, nobody acts
    /// alone when the peer is lost, only an operator can take over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessSection>,
    /// The volumes this node serves (`[[volume]]` tables).
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeConfig>,
}

/// `[node]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name; the peer's certificate check uses it.
    pub name: String,
    /// Where volumes and records are kept (created if missing).
    pub data_dir: PathBuf,
}

/// `[nbd]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NbdSection {
    /// Address the NBD server listens on.
    pub listen: SocketAddr,
    /// Host connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Requests one connection may have in flight; the reader stops reading
    /// the socket at this depth (back-pressure).
    pub max_inflight_per_connection: usize,
    /// Largest READ or WRITE payload accepted (advertised as the maximum block size).
    pub max_request_size: ByteSize,
    /// TLS for hosts (NBD's STARTTLS).
    pub tls: NbdTlsMode,
    /// The server certificate (PEM) hosts see, with `tls` on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// When set, hosts must present a certificate signed by this CA (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Whether hosts speak TLS to the NBD server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NbdTlsMode {
    /// No TLS (STARTTLS is refused as unsupported).
    #[default]
    Off,
    /// A host may upgrade with STARTTLS, or not.
    Optional,
    /// A host must upgrade before anything else: until then every option
    /// gets `NBD_REP_ERR_TLS_REQD` and no export name is shown.
    Required,
}

impl Default for NbdSection {
    fn default() -> Self {
        NbdSection {
            listen: defaults::NBD_LISTEN.parse().expect("default address parses"),
            max_connections: defaults::NBD_MAX_CONNECTIONS,
            max_inflight_per_connection: defaults::NBD_MAX_INFLIGHT_PER_CONNECTION,
            max_request_size: ByteSize(defaults::NBD_MAX_REQUEST_BYTES),
            tls: NbdTlsMode::Off,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// `[admin]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of the admin HTTP server (`GET /metrics`, `GET /status`).
    pub listen: SocketAddr,
    /// A file holding a bearer token: when set, every admin request must
    /// carry `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without a token (anyone who reaches
    /// it reads the status; changes are still refused from other hosts).
    #[serde(default)]
    pub allow_unauthenticated_remote: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: defaults::ADMIN_LISTEN.parse().expect("default address parses"),
            token_file: None,
            allow_unauthenticated_remote: false,
        }
    }
}

/// `[peer]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's node name; must match the name in its certificate.
    pub name: String,
    /// Where this node accepts the peer's connections.
    pub listen: SocketAddr,
    /// Where this node reaches the peer (or a WAN simulator in front of it).
    pub connect: SocketAddr,
    /// How long a write that needs the peer, or a read of a peer-owned
    /// extent, waits for it before failing with EIO.
    #[serde(default = "defaults::peer_timeout")]
    pub peer_timeout: HumanDuration,
    /// How often the dialer probes the link.
    #[serde(default = "defaults::heartbeat_interval")]
    pub heartbeat_interval: HumanDuration,
    /// Silence after which the link is declared down (no frame, or no
    /// answer to a heartbeat, for this long).
    #[serde(default = "defaults::heartbeat_timeout")]
    pub heartbeat_timeout: HumanDuration,
    /// The peer's admin address, for operators' tools only (`/status`
    /// reports it, so `geomirror top` given one node shows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
}

/// `[witness]` of a node: the third-site process that grants leases and
/// the survivor role (see DESIGN.md 5.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// The witness's node name; must match the name in its certificate.
    pub name: String,
    /// Where this node reaches the witness.
    pub connect: SocketAddr,
    /// How long a lease from the witness lets this node serve while the
    /// peer link is down (renewed every third of it).
    #[serde(default = "defaults::lease")]
    pub lease: HumanDuration,
    /// How much the clocks of the two nodes may disagree about one lease;
    /// a survivor waits `lease + max_clock_drift` before acting alone.
    #[serde(default = "defaults::max_clock_drift")]
    pub max_clock_drift: HumanDuration,
}

/// `[tls]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// CA certificate (PEM) that signs both nodes' certificates.
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// One `[[volume]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Export name over NBD; the same at both sites.
    pub name: String,
    /// Size in bytes; a multiple of `block_size`. Fixed once created.
    pub size: ByteSize,
    /// Unit of I/O tracking (power of two, 512 B to 64 KiB).
    #[serde(default = "defaults::block_size")]
    pub block_size: ByteSize,
    /// Unit of the claims record (power of two, at least `block_size`).
    #[serde(default = "defaults::extent_size")]
    pub extent_size: ByteSize,
    /// Most extents this node may own at once: the exposure bound.
    #[serde(default = "defaults::max_owned_extents")]
    pub max_owned_extents: u32,
    /// Extents claimed ahead of a detected sequential stream.
    #[serde(default = "defaults::predict_extents")]
    pub predict_extents: u32,
    /// How long an owned extent stays idle (and durable at the peer) before release.
    #[serde(default = "defaults::release_after")]
    pub release_after: HumanDuration,
    /// Replication mode.
    #[serde(default)]
    pub mode: ReplicationMode,
    /// What a `sync`/`sync-memory` volume does while the peer is unreachable.
    #[serde(default)]
    pub on_peer_loss: PeerLossPolicy,
}

impl VolumeConfig {
    /// A volume with default knobs, for tests and the demo.
    pub fn with_defaults(name: &str, size: ByteSize) -> Self {
        VolumeConfig {
            name: name.to_string(),
            size,
            block_size: defaults::block_size(),
            extent_size: defaults::extent_size(),
            max_owned_extents: defaults::max_owned_extents(),
            predict_extents: defaults::predict_extents(),
            release_after: defaults::release_after(),
            mode: ReplicationMode::default(),
            on_peer_loss: PeerLossPolicy::default(),
        }
    }
}

impl NodeConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates `text`; `path` names it in errors and anchors
    /// relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim_end().to_string() })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate(path)?;
        Ok(config)
    }

    /// The effective configuration as TOML (defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a validated config serializes")
    }

    fn resolve_paths(&mut self, base: &Path) {
        let anchor = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        anchor(&mut self.node.data_dir);
        if let Some(token) = &mut self.admin.token_file {
            anchor(token);
        }
        for p in [&mut self.nbd.tls_cert, &mut self.nbd.tls_key, &mut self.nbd.tls_client_ca].into_iter().flatten() {
            anchor(p);
        }
        if let Some(tls) = &mut self.tls {
            anchor(&mut tls.ca);
            anchor(&mut tls.cert);
            anchor(&mut tls.key);
        }
    }

    /// Checks every value and the relations between them.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid { path: path.to_path_buf(), key, reason };
        check_name(&self.node.name).map_err(|r| invalid("node.name".into(), r))?;
        if self.nbd.tls != NbdTlsMode::Off && (self.nbd.tls_cert.is_none() || self.nbd.tls_key.is_none()) {
            return Err(invalid("nbd.tls".into(), "TLS for hosts needs nbd.tls_cert and nbd.tls_key".into()));
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token_file.is_none() && !self.admin.allow_unauthenticated_remote {
            return Err(invalid(
                "admin.listen".into(),
                format!(
                    "{} is reachable from other hosts and the admin API has no authentication: set admin.token_file, \
                     or admin.allow_unauthenticated_remote = true to accept that",
                    self.admin.listen
                ),
            ));
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir".into(), "must not be empty".into()));
        }
        if self.nbd.listen == self.admin.listen && self.nbd.listen.port() != 0 {
            return Err(invalid("admin.listen".into(), format!("{} is also nbd.listen", self.admin.listen)));
        }
        if self.nbd.max_connections == 0 || self.nbd.max_connections > defaults::NBD_MAX_CONNECTIONS_LIMIT {
            return Err(invalid("nbd.max_connections".into(), format!("must be between 1 and {}", defaults::NBD_MAX_CONNECTIONS_LIMIT)));
        }
        if self.nbd.max_inflight_per_connection == 0 || self.nbd.max_inflight_per_connection > 1024 {
            return Err(invalid("nbd.max_inflight_per_connection".into(), "must be between 1 and 1024".into()));
        }
        let req = self.nbd.max_request_size.bytes();
        if !(4096..=defaults::NBD_MAX_REQUEST_BYTES_LIMIT).contains(&req) {
            return Err(invalid(
                "nbd.max_request_size".into(),
                format!("must be between 4KiB and {}", ByteSize(defaults::NBD_MAX_REQUEST_BYTES_LIMIT)),
            ));
        }
        if self.volumes.is_empty() {
            return Err(invalid("volume".into(), "at least one [[volume]] is required".into()));
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let key = |field: &str| format!("volume[{i}].{field}");
            check_volume_name(&v.name).map_err(|r| invalid(key("name"), r))?;
            if self.volumes[..i].iter().any(|other| other.name == v.name) {
                return Err(invalid(key("name"), format!("volume `{}` is defined twice", v.name)));
            }
            let block = v.block_size.bytes();
            if !block.is_power_of_two() || !(defaults::BLOCK_BYTES_MIN..=defaults::BLOCK_BYTES_MAX).contains(&block) {
                return Err(invalid(key("block_size"), format!("{} must be a power of two from 512B to 64KiB", v.block_size)));
            }
            let extent = v.extent_size.bytes();
            if !extent.is_power_of_two() || extent < block || extent > defaults::EXTENT_BYTES_MAX {
                return Err(invalid(
                    key("extent_size"),
                    format!("{} must be a power of two from block_size ({}) to 1GiB", v.extent_size, v.block_size),
                ));
            }
            let size = v.size.bytes();
            if size == 0 || size % block != 0 {
                return Err(invalid(key("size"), format!("{} must be a non-zero multiple of block_size ({})", v.size, v.block_size)));
            }
            if size > defaults::VOLUME_BYTES_MAX {
                return Err(invalid(key("size"), format!("{} is above the limit of {}", v.size, ByteSize(defaults::VOLUME_BYTES_MAX))));
            }
            if v.max_owned_extents == 0 {
                return Err(invalid(key("max_owned_extents"), "must be at least 1".into()));
            }
            if v.predict_extents > defaults::PREDICT_EXTENTS_LIMIT {
                return Err(invalid(key("predict_extents"), format!("must be at most {}", defaults::PREDICT_EXTENTS_LIMIT)));
            }
        }
        match (&self.peer, &self.tls) {
            (Some(peer), tls) => {
                check_name(&peer.name).map_err(|r| invalid("peer.name".into(), r))?;
                if peer.name == self.node.name {
                    return Err(invalid("peer.name".into(), "must differ from node.name".into()));
                }
                if peer.listen.port() != 0 && (peer.listen == self.nbd.listen || peer.listen == self.admin.listen) {
                    return Err(invalid("peer.listen".into(), format!("{} is already used by nbd or admin", peer.listen)));
                }
                if peer.heartbeat_interval.get().is_zero() {
                    return Err(invalid("peer.heartbeat_interval".into(), "must be above zero".into()));
                }
                if peer.peer_timeout.get() <= peer.heartbeat_interval.get() {
                    return Err(invalid(
                        "peer.peer_timeout".into(),
                        format!("{} must be longer than peer.heartbeat_interval ({})", peer.peer_timeout, peer.heartbeat_interval),
                    ));
                }
                if peer.heartbeat_timeout.get() <= peer.heartbeat_interval.get() {
                    return Err(invalid(
                        "peer.heartbeat_timeout".into(),
                        format!("{} must be longer than peer.heartbeat_interval ({})", peer.heartbeat_timeout, peer.heartbeat_interval),
                    ));
                }
                if tls.is_none() {
                    return Err(invalid("tls".into(), "a [tls] section is required with [peer]".into()));
                }
                if let Some(w) = &self.witness {
                    check_name(&w.name).map_err(|r| invalid("witness.name".into(), r))?;
                    if w.name == self.node.name || w.name == peer.name {
                        return Err(invalid("witness.name".into(), "must differ from node.name and peer.name".into()));
                    }
                    let (lease, drift) = (w.lease.get(), w.max_clock_drift.get());
                    // A node must notice the link is down before its lease
                    // can run out: the survivor acts alone once the other's
                    // lease has surely ended, and the other must have stopped
                    // trusting the link by then.
                    if lease <= peer.heartbeat_timeout.get() {
                        return Err(invalid(
                            "witness.lease".into(),
                            format!("{} must be longer than peer.heartbeat_timeout ({})", w.lease, peer.heartbeat_timeout),
                        ));
                    }
                    if drift.is_zero() || drift * 2 >= lease {
                        return Err(invalid(
                            "witness.max_clock_drift".into(),
                            format!("{} must be above zero and below half of witness.lease ({})", w.max_clock_drift, w.lease),
                        ));
                    }
                }
            }
            (None, _) if self.witness.is_some() => {
                return Err(invalid("witness".into(), "a [witness] section needs a [peer] section".into()));
            }
            (None, Some(_)) => {}
            (None, None) => {}
        }
        Ok(())
    }
}

/// The configuration of a witness process (`geomirror witness --config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// `[node]`: the witness's name (in its certificate) and where it keeps
    /// its grants.
    pub node: NodeSection,
    /// `[witness]`: where it listens and which two nodes it serves.
    pub witness: WitnessListenSection,
    /// `[tls]`: the same CA as the nodes, and the witness's certificate.
    pub tls: TlsSection,
}

/// `[witness]` of the witness process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessListenSection {
    /// Where the nodes connect.
    #[serde(default = "default_witness_listen")]
    pub listen: SocketAddr,
    /// The names of the two nodes it arbitrates between; any other
    /// certificate of the CA is refused.
    pub nodes: [String; 2],
}

fn default_witness_listen() -> SocketAddr {
    defaults::WITNESS_LISTEN.parse().expect("default address parses")
}

impl WitnessConfig {
    /// Reads and validates a witness config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates witness config text; `path` names it in errors
    /// and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: WitnessConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim_end().to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.node.data_dir, &mut config.tls.ca, &mut config.tls.cert, &mut config.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let invalid = |key: &str, reason: String| ConfigError::Invalid { path: path.to_path_buf(), key: key.into(), reason };
        check_name(&config.node.name).map_err(|r| invalid("node.name", r))?;
        if config.node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir", "must not be empty".into()));
        }
        for (i, n) in config.witness.nodes.iter().enumerate() {
            check_name(n).map_err(|r| invalid(&format!("witness.nodes[{i}]"), r))?;
            if *n == config.node.name {
                return Err(invalid(&format!("witness.nodes[{i}]"), "must differ from node.name".into()));
            }
        }
        if config.witness.nodes[0] == config.witness.nodes[1] {
            return Err(invalid("witness.nodes", "the two nodes must differ".into()));
        }
        Ok(config)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{name}` must be 1 to 64 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("`{name}` may contain only letters, digits, `-`, `_` and `.`"));
    }
    Ok(())
}

fn check_volume_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name.starts_with('.') {
        return Err(format!("`{name}` must not start with `.`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
