//! The WAN simulator (`geomirror sim`, see sim/USAGE.md) as a benchmark
//! process: started with `--listen 127.0.0.1:0 --control 127.0.0.1:0`, its
//! chosen addresses read back from the one `listen=… upstream=… control=…`
//! line it prints, then driven through its HTTP control API: settings,
//! hold partitions, heal, and the per-direction byte counters of `GET /link`.
//!
//! Direction names follow the simulator: "ab" is client → upstream (the
//! side that dials the simulator → the side it forwards to), "ba" the other
//! way.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http;
use crate::procs::Server;

/// A running simulator, killed when dropped.
pub struct Sim {
    /// Where clients connect (`127.0.0.1:PORT`).
    pub listen: String,
    /// The control API (`127.0.0.1:PORT`).
    pub control: String,
    /// The process.
    pub server: Server,
}

/// The addresses the simulator prints on stdout at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// Where it accepts connections.
    pub listen: String,
    /// Where it forwards them.
    pub upstream: String,
    /// The control API, if one was asked for.
    pub control: Option<String>,
}

/// Parses `listen=ADDR upstream=ADDR control=ADDR` (control may be absent):
/// the first such line in `output` (log lines may surround it).
pub fn parse_addresses(output: &str) -> Option<Addresses> {
    output.lines().find_map(|line| {
        let line = line.trim();
        if !line.starts_with("listen=") {
            return None;
        }
        let mut listen = None;
        let mut upstream = None;
        let mut control = None;
        for field in line.split_whitespace() {
            match field.split_once('=') {
                Some(("listen", v)) => listen = Some(v.to_string()),
                Some(("upstream", v)) => upstream = Some(v.to_string()),
                Some(("control", v)) => control = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Addresses { listen: listen?, upstream: upstream?, control })
    })
}

/// Link settings in `GET /link` (µs, bits/s; `None` = unlimited).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Settings {
    /// One-way delay client → upstream.
    pub delay_ab_us: u64,
    /// One-way delay upstream → client.
    pub delay_ba_us: u64,
    /// Jitter amplitude.
    #[serde(default)]
    pub jitter_us: u64,
    /// Cap client → upstream.
    pub bandwidth_ab_bps: Option<u64>,
    /// Cap upstream → client.
    pub bandwidth_ba_bps: Option<u64>,
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct DirCounters {
    /// Bytes read from the sender.
    pub received_bytes: u64,
    /// Bytes delivered to the receiver.
    pub delivered_bytes: u64,
    /// Bytes inside the proxy now.
    pub queued_bytes: u64,
    /// Bytes dropped by resets.
    #[serde(default)]
    pub discarded_bytes: u64,
}

/// Counters in `GET /link`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Counters {
    /// Client → upstream.
    pub ab: DirCounters,
    /// Upstream → client.
    pub ba: DirCounters,
    /// Connections open now.
    #[serde(default)]
    pub connections_open: u64,
    /// Connections since start.
    #[serde(default)]
    pub connections_total: u64,
}

/// Partition state per direction (`open`, `hold`, `reset`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Partition {
    /// Client → upstream.
    pub ab: String,
    /// Upstream → client.
    pub ba: String,
}

/// `GET /link`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct LinkStatus {
    /// Current settings.
    pub settings: Settings,
    /// Partition state.
    pub partition: Partition,
    /// Byte and connection counters.
    pub counters: Counters,
}

impl LinkStatus {
    /// Parses the control API's status document.
    pub fn parse(json: &str) -> Result<LinkStatus> {
        serde_json::from_str(json).with_context(|| format!("parse the simulator's /link JSON: {json}"))
    }
}

/// A bandwidth as the control API wants it: bits/s, or unlimited.
pub fn bandwidth_json(bits_per_second: Option<u64>) -> String {
    match bits_per_second {
        Some(bps) => format!("{{\"bandwidth_bps\":{bps}}}"),
        None => "{\"bandwidth_bps\":null}".to_string(),
    }
}

/// Parses a rate like `1Gbit`, `100Mbit`, `2.5Gbps`, `64kbit` or
/// `unlimited` into bits/s (decimal units, as the simulator reads them).
pub fn parse_rate(text: &str) -> Result<Option<u64>> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let lower = t.to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let number: f64 = number.parse().with_context(|| format!("`{text}` is not a rate like 1Gbit or unlimited"))?;
    let scale = match unit.trim() {
        "bit" | "bps" | "" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        other => bail!("`{text}`: unknown rate unit `{other}` (bit, kbit, Mbit, Gbit)"),
    };
    Ok(Some((number * scale).round() as u64))
}

/// Parses a duration like `20ms`, `250us`, `1.5s` (what `--rtt` takes).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let number: f64 = number.parse().with_context(|| format!("`{text}` is not a duration like 20ms"))?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "us" | "µs" => number / 1e6,
        "ns" => number / 1e9,
        other => bail!("`{text}`: unknown duration unit `{other}` (s, ms, us, ns)"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// `--rtt` lists: each entry as given (trimmed) and parsed; at least one.
pub fn parse_rtts(list: &[String]) -> Result<Vec<(String, Duration)>> {
    let rtts: Vec<(String, Duration)> = list.iter().map(|t| Ok((t.trim().to_string(), parse_duration(t)?))).collect::<Result<_>>()?;
    if rtts.is_empty() {
        bail!("--rtt needs at least one round-trip time");
    }
    Ok(rtts)
}

impl Sim {
    /// Starts `binary sim --listen 127.0.0.1:0 --to upstream --rtt rtt
    /// [--bandwidth b] --control 127.0.0.1:0` with its log in `dir/<label>.log`
    /// and waits for the address line.
    pub fn start(binary: &Path, label: &str, upstream: &str, rtt: Duration, bandwidth: Option<u64>, dir: &Path) -> Result<Sim> {
        let mut args = vec![
            "sim".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--to".into(),
            upstream.to_string(),
            "--rtt".into(),
            format!("{}us", rtt.as_micros()),
            "--control".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(bps) = bandwidth {
            args.extend(["--bandwidth".into(), format!("{bps}bit")]);
        }
        let log = dir.join(format!("{label}.log"));
        let mut server = Server::start(label, binary, &args, log.clone())?;
        let started = Instant::now();
        loop {
            server.check_alive()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addrs) = parse_addresses(&text) {
                let control = addrs.control.with_context(|| format!("{label} printed no control address"))?;
                return Ok(Sim { listen: addrs.listen, control, server });
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("{label} printed no `listen=… control=…` line within 10 s; its log:\n{}", server.log_tail(10));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /link`.
    pub fn status(&self) -> Result<LinkStatus> {
        LinkStatus::parse(&http::get(&self.control, "/link")?)
    }

    /// Sets the bandwidth cap of both directions (`None`: unlimited).
    pub fn set_bandwidth(&self, bits_per_second: Option<u64>) -> Result<LinkStatus> {
        let body = bandwidth_json(bits_per_second);
        LinkStatus::parse(&http::request(&self.control, "PUT", "/link", Some(&body))?.body)
    }

    /// Starts a hold partition of both directions: connections stay up,
    /// nothing is delivered.
    pub fn partition_hold(&self) -> Result<LinkStatus> {
        let body = r#"{"mode":"hold","direction":"both"}"#;
        LinkStatus::parse(&http::request(&self.control, "POST", "/partition", Some(body))?.body)
    }

    /// Ends all partitions.
    pub fn heal(&self) -> Result<LinkStatus> {
        LinkStatus::parse(&http::request(&self.control, "POST", "/heal", Some("{}"))?.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_line_among_log_lines() {
        let out = "2026-11-22T01:07:32Z  INFO geomirror_sim::proxy: link simulator started: ab 10ms listen=127.0.0.1:41155 upstream=127.0.0.1:21003 control=Some(127.0.0.1:36597)\n\
                   listen=127.0.0.1:41155 upstream=127.0.0.1:21003 control=127.0.0.1:36597\n";
        let a = parse_addresses(out).unwrap();
        assert_eq!(a.listen, "127.0.0.1:41155");
        assert_eq!(a.upstream, "127.0.0.1:21003");
        assert_eq!(a.control.as_deref(), Some("127.0.0.1:36597"));
        let without_control = parse_addresses("listen=127.0.0.1:1 upstream=127.0.0.1:2\n").unwrap();
        assert_eq!(without_control.control, None);
        assert_eq!(parse_addresses("starting…\n"), None);
        assert_eq!(parse_addresses("listen=127.0.0.1:1\n"), None, "upstream is required");
    }

    #[test]
    fn parses_the_link_status() {
        let json = r#"{"listen":"127.0.0.1:41155","upstream":"127.0.0.1:21003",
            "settings":{"delay_ab_us":10000,"delay_ba_us":10000,"jitter_us":0,"bandwidth_ab_bps":null,"bandwidth_ba_bps":1000000000},
            "partition":{"ab":"hold","ba":"open"},
            "counters":{"ab":{"received_bytes":2026,"delivered_bytes":2000,"queued_bytes":26,"discarded_bytes":0},
                        "ba":{"received_bytes":1875,"delivered_bytes":1875,"queued_bytes":0,"discarded_bytes":0},
                        "connections_open":2,"connections_total":2,"connections_reset":0,"connections_refused":0,"connections_failed":0}}"#;
        let s = LinkStatus::parse(json).unwrap();
        assert_eq!(s.settings.delay_ab_us, 10_000);
        assert_eq!(s.settings.bandwidth_ab_bps, None);
        assert_eq!(s.settings.bandwidth_ba_bps, Some(1_000_000_000));
        assert_eq!(s.partition.ab, "hold");
        assert_eq!(s.counters.ab.delivered_bytes, 2000);
        assert_eq!(s.counters.ab.queued_bytes, 26);
        assert_eq!(s.counters.ba.received_bytes, 1875);
        assert_eq!(s.counters.connections_open, 2);
        assert!(LinkStatus::parse(r#"{"error":"bad"}"#).is_err());
    }

    #[test]
    fn rates_durations_and_bodies() {
        assert_eq!(parse_rate("1Gbit").unwrap(), Some(1_000_000_000));
        assert_eq!(parse_rate("2.5Gbps").unwrap(), Some(2_500_000_000));
        assert_eq!(parse_rate("100Mbit").unwrap(), Some(100_000_000));
        assert_eq!(parse_rate("64kbit").unwrap(), Some(64_000));
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1GB").is_err());
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("20").is_err());
        let rtts = parse_rtts(&["2ms".into(), " 80ms".into()]).unwrap();
        assert_eq!(rtts, vec![("2ms".to_string(), Duration::from_millis(2)), ("80ms".to_string(), Duration::from_millis(80))]);
        assert!(parse_rtts(&[]).is_err());
        assert_eq!(bandwidth_json(Some(1000)), r#"{"bandwidth_bps":1000}"#);
        assert_eq!(bandwidth_json(None), r#"{"bandwidth_bps":null}"#);
    }
}
