//! `geomirror status`: a one-shot summary of a running node for humans and
//! scripts, in the spirit of `drbdadm status`; the exit code says whether
//! everything is healthy. The text is a pure function of the node's
//! `/status` document ([`summary`]), so it is tested without a node.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::Args;
use geomirror_wire::status::{NodeStatus, VolumeStatus};

/// `geomirror status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A running node's admin address.
    #[arg(long)]
    pub admin: SocketAddr,
    /// Print the node's `/status` document as JSON instead.
    #[arg(long)]
    pub json: bool,
}

/// What the summary found wrong (empty: healthy).
pub type Problems = Vec<String>;

/// Prints the node's status; fails (exit code 1) when the node or a volume
/// is not healthy, naming why.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = crate::ops::admin_client(args.admin);
    let raw = client.request("GET", "/status", None).await.with_context(|| format!("ask the node at {} for its status", args.admin))?;
    let status: NodeStatus = serde_json::from_value(raw.clone()).context("read the node's status")?;
    let (text, problems) = summary(&status);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&raw)?);
    } else {
        print!("{text}");
    }
    if !problems.is_empty() {
        bail!("not healthy: {}", problems.join("; "));
    }
    Ok(())
}

/// The summary text of `s`, and its problems.
pub fn summary(s: &NodeStatus) -> (String, Problems) {
    let mut out = String::new();
    let mut problems = Problems::new();
    let health = s.standing.as_ref().map_or("single site".to_string(), |st| st.health.clone());
    let _ = write!(out, "{}  {health}", s.name);
    if let Some(st) = &s.standing {
        let _ = write!(out, " ({})", st.reason);
        if st.health != "connected" {
            problems.push(format!("node {}: {} ({})", s.name, st.health, st.reason));
        }
    }
    let _ = writeln!(out, "  up {}  version {}", duration(s.uptime_seconds), s.version);
    if let Some(p) = &s.peer {
        let rtt = p.rtt_ms.map_or(String::new(), |r| format!(", rtt {r:.1} ms"));
        let _ = write!(out, "  peer {}: link {} for {}{rtt}", p.name, p.link, duration(p.since_seconds));
        if let Some(e) = p.last_error.as_ref().filter(|_| p.link != "up") {
            let _ = write!(out, " (last error: {e})");
        }
        let _ = writeln!(out);
        if p.link != "up" {
            problems.push(format!("peer link {}", p.link));
        }
    }
    if let Some(w) = s.standing.as_ref().and_then(|st| st.witness.as_ref()) {
        let lease = s.standing.as_ref().and_then(|st| st.lease_left_seconds).map_or(String::new(), |l| format!(", lease {l:.1} s left"));
        let _ = writeln!(out, "  witness {w}{lease}");
    }
    for v in &s.volumes {
        volume(&mut out, &mut problems, v);
    }
    (out, problems)
}

fn volume(out: &mut String, problems: &mut Problems, v: &VolumeStatus) {
    let _ = writeln!(out, "  {}  {}  {}  {}", v.name, bytes(v.size_bytes), mode_of(v), if v.serving { "serving" } else { "NOT SERVING" });
    if !v.serving {
        let why = v.replication.as_ref().and_then(|r| r.problem.clone()).unwrap_or_else(|| "not serving".into());
        problems.push(format!("volume {}: {why}", v.name));
    }
    let Some(r) = &v.replication else { return };
    let extent = u64::from(v.extent_bytes);
    let limit = if r.max_owned_extents > 0 { format!(" of {}", r.max_owned_extents) } else { String::new() };
    let _ = writeln!(
        out,
        "    exposed  {} extents owned here{limit} ({}); the peer owns {}",
        r.owned_extents,
        bytes(r.owned_extents * extent),
        r.peer_owned_extents
    );
    let age = |s: Option<f64>| s.map_or(String::new(), |s| format!(" (oldest {})", duration(s)));
    let _ = writeln!(
        out,
        "    behind   {} unsent{}, {} not yet durable at the peer{} ({} of it in the peer's memory)",
        bytes(r.unsent_bytes),
        age(r.oldest_unsent_seconds),
        bytes(r.not_durable_at_peer_bytes),
        age(r.oldest_not_durable_seconds),
        bytes(r.received_not_durable_bytes)
    );
    let _ = writeln!(out, "    wan      {} claim round trips, {} pulls, {} handovers received", r.claim_round_trips, r.pulls, r.handovers);
    if r.writes_waiting_for_peer > 0 || r.last_ack.is_some() {
        let ack = r.last_ack.as_ref().map_or(String::new(), |a| {
            let ms = |x: Option<f64>| x.map_or("-".to_string(), |s| format!("{:.2}", s * 1e3));
            format!(
                "; last write: local {} ms, peer received {} ms, durable {} ms",
                ms(Some(a.local_seconds)),
                ms(a.peer_received_seconds),
                ms(a.peer_durable_seconds)
            )
        });
        let _ = writeln!(out, "    sync     {} writes waiting for the peer{ack}", r.writes_waiting_for_peer);
    }
    if let Some(d) = r.degraded_seconds {
        let _ =
            writeln!(out, "    DEGRADED for {}: writes are acknowledged without the peer (on_peer_loss = {})", duration(d), r.on_peer_loss);
        problems.push(format!("volume {}: degraded for {}", v.name, duration(d)));
    }
    if let Some(rs) = &r.resync {
        let eta = rs.eta_seconds.map_or(String::new(), |e| format!(", about {} left", duration(e)));
        let _ = writeln!(
            out,
            "    resync   {} of {} compared, {} blocks differ{eta}",
            bytes(rs.bytes_done),
            bytes(rs.bytes_total),
            rs.blocks_differing
        );
    }
    if r.taken_extents > 0 {
        let _ = writeln!(out, "    taken    {} extents claimed alone or taken over, not yet resynced to the peer", r.taken_extents);
    }
}

/// A volume's mode as shown: `single site`, or its replication mode (a node
/// older than the modes reports none: it mirrors asynchronously).
pub fn mode_of(v: &VolumeStatus) -> &str {
    match &v.replication {
        None => "single site",
        Some(r) if r.mode.is_empty() => "async",
        Some(r) => &r.mode,
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `3h02m`, `4m05s`, `12.3s`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use geomirror_wire::status::{PeerStatus, ReplicationStatus, StandingStatus};

    use super::*;

    /// A two-site node's status: healthy, one volume in `mode`.
    pub(crate) fn sample(mode: &str) -> NodeStatus {
        NodeStatus {
            name: "site-a".into(),
            uptime_seconds: 3725.0,
            version: "0.1.0".into(),
            nbd_listen: "127.0.0.1:10809".into(),
            volumes: vec![VolumeStatus {
                name: "vol0".into(),
                size_bytes: 1 << 30,
                block_bytes: 4096,
                extent_bytes: 1 << 20,
                reads_total: 10,
                writes_total: 20,
                read_bytes_total: 40960,
                write_bytes_total: 81920,
                serving: true,
                replication: Some(ReplicationStatus {
                    owned_extents: 12,
                    max_owned_extents: 1024,
                    peer_owned_extents: 3,
                    unsent_bytes: 8192,
                    not_durable_at_peer_bytes: 3 << 20,
                    received_not_durable_bytes: 4096,
                    claim_round_trips: 34,
                    pulls: 2,
                    handovers: 1,
                    problem: None,
                    tracking_bytes: 0,
                    copy_sent_bytes_total: 0,
                    oldest_unsent_seconds: None,
                    oldest_not_durable_seconds: Some(0.25),
                    taken_extents: 0,
                    resync: None,
                    mode: mode.into(),
                    on_peer_loss: "suspend".into(),
                    degraded_seconds: None,
                    degradations: 0,
                    writes_waiting_for_peer: 0,
                    last_ack: None,
                }),
            }],
            peer: Some(PeerStatus {
                name: "site-b".into(),
                link: "up".into(),
                since_seconds: 12.0,
                last_error: None,
                dials: true,
                connect: "127.0.0.1:7002".into(),
                listen: "127.0.0.1:7001".into(),
                rtt_ms: Some(20.4),
                admin: Some("127.0.0.1:9091".into()),
                sent_bytes_total: 0,
            }),
            standing: Some(StandingStatus {
                health: "connected".into(),
                reason: "the peer link is up".into(),
                serving_hosts: true,
                generation: 0,
                survivor_generation: None,
                acting_alone_in_seconds: None,
                witness: Some("connected".into()),
                lease_left_seconds: Some(1.8),
            }),
        }
    }

    #[test]
    fn a_healthy_node_reads_as_such_and_has_no_problems() {
        let (text, problems) = summary(&sample("sync"));
        assert!(problems.is_empty(), "{problems:?}");
        for want in [
            "site-a  connected (the peer link is up)  up 1h02m",
            "peer site-b: link up for 12.0s, rtt 20.4 ms",
            "vol0  1.0 GiB  sync  serving",
            "12 extents owned here of 1024 (12.0 MiB); the peer owns 3",
            "8.0 KiB unsent, 3.0 MiB not yet durable at the peer (oldest 0.2s)",
            "34 claim round trips, 2 pulls",
            "witness connected, lease 1.8 s left",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
    }

    #[test]
    fn a_lost_peer_a_degraded_or_unserved_volume_are_problems() {
        let mut s = sample("sync");
        s.standing.as_mut().unwrap().health = "peer-lost".into();
        s.peer.as_mut().unwrap().link = "down".into();
        s.peer.as_mut().unwrap().last_error = Some("the peer did not answer a heartbeat".into());
        let r = s.volumes[0].replication.as_mut().unwrap();
        r.degraded_seconds = Some(75.0);
        s.volumes[0].serving = false;
        s.volumes[0].replication.as_mut().unwrap().problem = Some("the peer's volume differs".into());
        let (text, problems) = summary(&s);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(text.contains("DEGRADED for 1m15s") && text.contains("NOT SERVING"), "{text}");
        assert!(text.contains("last error: the peer did not answer a heartbeat"), "{text}");
        assert!(problems.iter().any(|p| p.contains("the peer's volume differs")));
    }

    #[test]
    fn a_node_of_an_older_version_without_the_newer_fields_still_reads() {
        let mut json = serde_json::to_value(sample("async")).unwrap();
        let r = json["volumes"][0]["replication"].as_object_mut().unwrap();
        for newer in
            ["mode", "on_peer_loss", "max_owned_extents", "writes_waiting_for_peer", "copy_sent_bytes_total", "oldest_not_durable_seconds"]
        {
            r.remove(newer);
        }
        json["peer"].as_object_mut().unwrap().remove("rtt_ms");
        json["volumes"][0].as_object_mut().unwrap().remove("write_bytes_total");
        let old: NodeStatus = serde_json::from_value(json).expect("an older /status is read with defaults");
        let (text, problems) = summary(&old);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(text.contains("12 extents owned here (12.0 MiB)") && !text.contains("rtt"), "{text}");
        assert!(text.contains("vol0  1.0 GiB  async  serving"), "{text}");
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(4.25), "4.2s");
        assert_eq!(duration(245.0), "4m05s");
    }
}
