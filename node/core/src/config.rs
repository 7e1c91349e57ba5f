//! The settings the core runs with, derived from the node's configuration
//! and checked against the core's limits.

use std::time::Duration;

use geomirror_config::{NodeConfig, PeerLossPolicy, ReplicationMode};

use crate::geometry::Geometry;
use crate::limits::{PREDICT_EXTENTS_MAX, VOLUMES_MAX};

/// The knobs of one volume's claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// Most extents owned at once (the exposure bound).
    pub max_owned: usize,
    /// Extents claimed ahead of a sequential stream (grows along the stream,
    /// up to [`VolumeSettings::predict_ceiling`]: the larger of this and a quarter of
    /// the limit, at most [`PREDICT_EXTENTS_MAX`]).
    pub predict: u32,
    /// Idle time before an extent durable at the peer is released.
    pub release_after: Duration,
}

/// One mirrored volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSettings {
    /// Export name (the same at both sites).
    pub name: String,
    /// Sizes.
    pub geometry: Geometry,
    /// Claims knobs.
    pub knobs: Knobs,
    /// When a host write is acknowledged (at start; an operator may change it).
    pub mode: ReplicationMode,
    /// What a `sync`/`sync-memory` volume does while the peer is unreachable.
    pub on_peer_loss: PeerLossPolicy,
}

/// Everything the core of one node needs to know at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// This node's name (informational: the core decides nothing by it;
    /// `wins_ties` is derived from it).
    pub node: String,
    /// Whether this node wins ties between concurrent claims of one extent
    /// (the node whose name sorts first does; the other concedes).
    pub wins_ties: bool,
    /// How long a request that needs the peer waits for it.
    pub peer_timeout: Duration,
    /// Period of the dialer's heartbeats (sent whether or not other traffic
    /// flows).
    pub heartbeat_interval: Duration,
    /// A session silent this long (no frame; or no answer to a heartbeat)
    /// ends: the peer is lost.
    pub heartbeat_timeout: Duration,
    /// The witness, if one is configured.
    pub witness: Option<WitnessSettings>,
    /// The volumes, in the order of the hello's list.
    pub volumes: Vec<VolumeSettings>,
}

/// How this node uses its witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WitnessSettings {
    /// The lease: while the peer link is down, the node serves hosts only
    /// while its lease runs (renewed every third of it).
    pub lease: Duration,
    /// How much two nodes' clocks may disagree about one lease.
    pub max_clock_drift: Duration,
}

/// A configuration the core cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreConfigError {
    /// The node has no `[peer]`: the core runs only for two-site nodes.
    #[error("the node has no [peer] section")]
    NoPeer,
    /// More volumes than the hello can index.
    #[error("{count} volumes configured; at most {VOLUMES_MAX} can be mirrored")]
    TooManyVolumes {
        /// Configured.
        count: usize,
    },
    /// A volume's geometry is not usable (the config validator prevents it).
    #[error("volume `{volume}`: {reason}")]
    Geometry {
        /// The volume.
        volume: String,
        /// What is wrong.
        reason: String,
    },
}

impl CoreConfig {
    /// Derives the core's settings from a validated node configuration.
    pub fn from_node_config(config: &NodeConfig) -> Result<CoreConfig, CoreConfigError> {
        let peer = config.peer.as_ref().ok_or(CoreConfigError::NoPeer)?;
        if config.volumes.len() > VOLUMES_MAX {
            return Err(CoreConfigError::TooManyVolumes { count: config.volumes.len() });
        }
        let volumes = config
            .volumes
            .iter()
            .map(|v| {
                let geometry = Geometry { block_bytes: v.block_size.bytes(), extent_bytes: v.extent_size.bytes(), size: v.size.bytes() };
                let settings = VolumeSettings {
                    name: v.name.clone(),
                    geometry,
                    knobs: Knobs {
                        max_owned: v.max_owned_extents as usize,
                        predict: v.predict_extents,
                        release_after: v.release_after.get(),
                    },
                    mode: v.mode,
                    on_peer_loss: v.on_peer_loss,
                };
                settings.check()?;
                Ok(settings)
            })
            .collect::<Result<Vec<_>, CoreConfigError>>()?;
        Ok(CoreConfig {
            node: config.node.name.clone(),
            wins_ties: config.node.name < peer.name,
            peer_timeout: peer.peer_timeout.get(),
            heartbeat_interval: peer.heartbeat_interval.get(),
            heartbeat_timeout: peer.heartbeat_timeout.get(),
            witness: config.witness.as_ref().map(|w| WitnessSettings { lease: w.lease.get(), max_clock_drift: w.max_clock_drift.get() }),
            volumes,
        })
    }
}

impl VolumeSettings {
    /// Checks what the core relies on.
    pub fn check(&self) -> Result<(), CoreConfigError> {
        let g = self.geometry;
        let bad = |reason: String| Err(CoreConfigError::Geometry { volume: self.name.clone(), reason });
        if g.block_bytes == 0 || g.extent_bytes < g.block_bytes || !g.extent_bytes.is_multiple_of(g.block_bytes) {
            return bad(format!("extent {} is not a whole number of blocks of {}", g.extent_bytes, g.block_bytes));
        }
        if g.size == 0 || !g.size.is_multiple_of(g.block_bytes) {
            return bad(format!("size {} is not a whole number of blocks", g.size));
        }
        if self.knobs.max_owned == 0 {
            return bad("max_owned_extents must be at least 1".into());
        }
        Ok(())
    }

    /// The prediction depth ceiling for this volume: the larger of
    /// `predict` and a quarter of the limit, never more than one claim
    /// message can carry (each claim is also limited to the room left
    /// under the limit).
    pub fn predict_ceiling(&self) -> u64 {
        (self.knobs.max_owned as u64 / 4).max(u64::from(self.knobs.predict)).min(PREDICT_EXTENTS_MAX)
    }
}
