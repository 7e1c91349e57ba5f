//! Reading a geomirror node's admin endpoint: `GET /status` (JSON, the
//! subset the benchmark uses, mirroring `geomirror_wire::status`; unknown
//! fields are ignored so a newer node still parses) and `GET /metrics`
//! (Prometheus text format: [`Metrics`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http;

/// What `GET /status` returns (subset).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// The volumes served.
    pub volumes: Vec<VolumeStatus>,
    /// The peer link, for a two-site node.
    #[serde(default)]
    pub peer: Option<PeerStatus>,
    /// The node's standing (two-site nodes since the witness landed).
    #[serde(default)]
    pub standing: Option<Standing>,
}

/// The node's standing (subset).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Standing {
    /// `connected`, `catching-up`, `peer-lost`, `survivor`, `fenced`, `resyncing`.
    pub health: String,
    /// `connected` or `unreachable` (None: no witness configured).
    #[serde(default)]
    pub witness: Option<String>,
}

/// The peer link.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct PeerStatus {
    /// The peer's name.
    pub name: String,
    /// `up`, `connecting` or `down`.
    pub link: String,
    /// Why the link last went down.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One volume.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct VolumeStatus {
    /// Export name.
    pub name: String,
    /// Host reads served since start.
    pub reads_total: u64,
    /// Host writes acknowledged since start.
    pub writes_total: u64,
    /// Whether hosts are served.
    #[serde(default = "yes")]
    pub serving: bool,
    /// Replication figures (two-site only).
    #[serde(default)]
    pub replication: Option<Replication>,
}

fn yes() -> bool {
    true
}

/// Replication figures of one volume.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Replication {
    /// Extents this node owns.
    pub owned_extents: u64,
    /// Extents the peer owns.
    pub peer_owned_extents: u64,
    /// Bytes written here and not yet sent.
    pub unsent_bytes: u64,
    /// Bytes written here and not yet durable at the peer.
    pub not_durable_at_peer_bytes: u64,
    /// Host writes that waited for a claim or handover round trip.
    pub claim_round_trips: u64,
    /// Reads pulled from the peer.
    pub pulls: u64,
    /// Extents handed over to this node.
    pub handovers: u64,
    /// Heap bytes of copy tracking (absent from nodes older than the
    /// protocol engine).
    #[serde(default)]
    pub tracking_bytes: Option<u64>,
    /// Why the volume is not served.
    #[serde(default)]
    pub problem: Option<String>,
}

impl NodeStatus {
    /// Parses a `/status` document.
    pub fn parse(json: &str) -> Result<NodeStatus> {
        serde_json::from_str(json).context("parse the node's /status JSON")
    }

    /// Fetches `/status` from the admin address `addr`.
    pub fn fetch(addr: &str) -> Result<NodeStatus> {
        NodeStatus::parse(&http::get(addr, "/status")?)
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Result<&VolumeStatus> {
        self.volumes.iter().find(|v| v.name == name).with_context(|| format!("node {} has no volume `{name}` in /status", self.name))
    }

    /// The replication figures of volume `name` (zero for a single-site node).
    pub fn replication(&self, name: &str) -> Result<Replication> {
        Ok(self.volume(name)?.replication.clone().unwrap_or_default())
    }

    /// The node's health (`none` before the witness landed).
    pub fn health(&self) -> &str {
        self.standing.as_ref().map_or("none", |s| s.health.as_str())
    }

    /// Whether the node's witness link is up.
    pub fn witness_connected(&self) -> bool {
        self.standing.as_ref().and_then(|s| s.witness.as_deref()) == Some("connected")
    }

    /// Whether the peer link is up.
    pub fn link_up(&self) -> bool {
        self.peer.as_ref().is_some_and(|p| p.link == "up")
    }
}

/// Polls `/status` at `addr` every `every` until `done` holds, for at most
/// `timeout`; returns the last status and how long it took. `what`
/// describes the condition for the error message.
pub fn wait_for(
    addr: &str,
    what: &str,
    every: Duration,
    timeout: Duration,
    mut done: impl FnMut(&NodeStatus) -> Result<bool>,
) -> Result<(NodeStatus, Duration)> {
    let started = Instant::now();
    loop {
        let status = NodeStatus::fetch(addr)?;
        if done(&status)? {
            return Ok((status, started.elapsed()));
        }
        if started.elapsed() > timeout {
            bail!("{what}: not reached within {timeout:?}; last /status of {addr}: {}", serde_json::to_string(&status).unwrap_or_default());
        }
        std::thread::sleep(every);
    }
}

/// One sample of a Prometheus text page.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Every sample, in page order.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Fetches and parses `/metrics` from the admin address `addr`.
    pub fn fetch(addr: &str) -> Result<Metrics> {
        Metrics::parse(&http::get(addr, "/metrics")?)
    }

    /// Parses the Prometheus text exposition format (comments and blank
    /// lines skipped; label values may hold escaped quotes).
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line).with_context(|| format!("metrics line {}: `{line}`", n + 1))?);
        }
        Ok(Metrics { samples })
    }

    /// The sum of the samples named `name` whose labels include every
    /// pair in `labels`; `None` if there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// [`sum`](Self::sum), 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels).unwrap_or(0.0)
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).context("no value")?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start_matches([',', ' ']);
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s.find('=').context("label without `=`")?;
            let key = s[..eq].trim().to_string();
            let quoted = s[eq + 1..].strip_prefix('"').with_context(|| format!("label value of `{key}` is not quoted"))?;
            let mut chars = quoted.char_indices();
            let mut value = String::new();
            let consumed = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated label value"),
                    },
                    Some((i, '"')) => break i + 1,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            };
            s = &quoted[consumed..];
            labels.insert(key, value);
        }
    }
    let value_text = rest.split_whitespace().next().context("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().with_context(|| format!("bad value `{v}`"))?,
    };
    Ok(Sample { name: name.to_string(), labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed `/status` of a two-site node, as geomirror 0.1.0 prints it.
    const STATUS: &str = r#"{"name":"site-a","uptime_seconds":2.03,"version":"0.1.0","nbd_listen":"127.0.0.1:21011",
      "volumes":[{"name":"p0","size_bytes":1073741824,"block_bytes":4096,"extent_bytes":1048576,"reads_total":3,
        "writes_total":32,"serving":true,"replication":{"owned_extents":32,"peer_owned_extents":1,"unsent_bytes":4096,
        "not_durable_at_peer_bytes":8192,"claim_round_trips":32,"pulls":2,"handovers":0,"problem":null}}],
      "peer":{"name":"site-b","link":"up","since_seconds":1.9,"last_error":null,"dials":true,
        "connect":"127.0.0.1:41155","listen":"127.0.0.1:21013"}}"#;

    #[test]
    fn parses_a_two_site_status() {
        let s = NodeStatus::parse(STATUS).unwrap();
        assert!(s.link_up());
        let r = s.replication("p0").unwrap();
        assert_eq!((r.owned_extents, r.not_durable_at_peer_bytes, r.claim_round_trips, r.pulls), (32, 8192, 32, 2));
        assert_eq!(s.volume("p0").unwrap().writes_total, 32);
        assert!(s.volume("nope").unwrap_err().to_string().contains("no volume `nope`"));
    }

    #[test]
    fn parses_a_single_site_status() {
        let single = r#"{"name":"x","uptime_seconds":1,"version":"0.1.0","nbd_listen":"a",
            "volumes":[{"name":"vol0","size_bytes":1,"block_bytes":4096,"extent_bytes":1048576,"reads_total":0,"writes_total":5,"serving":true}]}"#;
        let s = NodeStatus::parse(single).unwrap();
        assert!(!s.link_up());
        assert_eq!(s.replication("vol0").unwrap(), Replication::default());
        assert!(NodeStatus::parse("{}").is_err());
    }

    #[test]
    fn parses_prometheus_text() {
        let text = "# TYPE geomirror_copy_sent_bytes_total counter\n\
            geomirror_copy_sent_bytes_total{volume=\"amp\"} 4096\n\
            geomirror_copy_sent_bytes_total{volume=\"p0\"} 10\n\
            \n\
            geomirror_peer_sent_bytes_total{volume=\"amp\",lane=\"bulk\"} 5000\n\
            geomirror_nbd_request_seconds_bucket{volume=\"a\",op=\"write\",le=\"+Inf\"} 7\n\
            odd{v=\"a \\\"quoted\\\", comma\"} 1.5e3\n\
            up 1\n";
        let m = Metrics::parse(text).unwrap();
        assert_eq!(m.samples.len(), 6);
        assert_eq!(m.get("geomirror_copy_sent_bytes_total", &[("volume", "amp")]), 4096.0);
        assert_eq!(m.sum("geomirror_copy_sent_bytes_total", &[]), Some(4106.0));
        assert_eq!(m.get("geomirror_peer_sent_bytes_total", &[("volume", "amp"), ("lane", "bulk")]), 5000.0);
        assert_eq!(m.sum("geomirror_peer_sent_bytes_total", &[("lane", "priority")]), None);
        assert_eq!(m.samples[3].labels.get("le").map(String::as_str), Some("+Inf"));
        assert_eq!(m.samples[4].labels.get("v").map(String::as_str), Some("a \"quoted\", comma"));
        assert_eq!(m.get("odd", &[]), 1500.0);
        assert_eq!(m.get("up", &[]), 1.0);
        assert!(Metrics::parse("novalue\n").is_err());
        assert!(Metrics::parse("x{a=\"b} 1\n").is_err());
        assert!(Metrics::parse("x{a=b} 1\n").is_err());
    }
}
