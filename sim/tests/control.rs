//! Goal: the control API and the CLI subcommands drive a running proxy.
//! Method: a proxy with its control API on 127.0.0.1; requests through the crate's HTTP client
//! and through `cli::run`/`cli::execute` in-process, effects checked on the proxy's handle.

mod common;

use std::time::Duration;

use common::*;
use geomirror_sim::cli::{self, LinkArgs, SimArgs, SimCommand};
use geomirror_sim::client::{ControlClient, ControlError};
use geomirror_sim::limits::CONTROL_BODY_BYTES_MAX;
use geomirror_sim::{Bandwidth, Direction, Flow, LinkSettings, LinkStatus, PartitionMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn command(command: SimCommand) -> SimArgs {
    SimArgs { command: Some(command), listen: None, to: None, control: None, seed: None, link: LinkArgs::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_link_reports_settings_and_counts_bytes() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let proxy = proxy(addr, LinkSettings::profile("metro").unwrap()).await;
        let control = ControlClient::new(proxy.control_addr().unwrap());

        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;
        client.write_all(&[7u8; 1000]).await.unwrap();
        server.read_exact(&mut [0u8; 1000]).await.unwrap();
        server.write_all(&[9u8; 300]).await.unwrap();
        client.read_exact(&mut [0u8; 300]).await.unwrap();

        let status: LinkStatus = control.status().await.unwrap();
        assert_eq!(status.listen, proxy.local_addr());
        assert_eq!(status.upstream, addr);
        assert_eq!(status.settings, LinkSettings::profile("metro").unwrap());
        assert!(status.partition.is_healed());
        let c = status.counters;
        assert_eq!((c.ab.received_bytes, c.ab.delivered_bytes, c.ab.queued_bytes), (1000, 1000, 0));
        assert_eq!((c.ba.received_bytes, c.ba.delivered_bytes, c.ba.queued_bytes), (300, 300, 0));
        assert_eq!((c.connections_open, c.connections_total), (1, 1));

        // Held bytes show up as queued.
        proxy.partition(PartitionMode::Hold, Direction::Ab);
        client.write_all(&[1u8; 500]).await.unwrap();
        assert!(eventually(Duration::from_secs(2), || proxy.counters().ab.queued_bytes == 500).await);
        let status = control.status().await.unwrap();
        assert_eq!(status.partition.ab, Flow::Hold);
        assert_eq!(status.counters.ab.queued_bytes, 500);

        // The raw JSON has the documented field names.
        let raw = control.request("GET", "/link", None).await.unwrap();
        assert_eq!(raw["settings"]["delay_ab_us"], 1000);
        assert_eq!(raw["settings"]["bandwidth_ba_bps"], 10_000_000_000u64);
        assert_eq!(raw["partition"]["ab"], "hold");
        assert_eq!(raw["counters"]["ab"]["queued_bytes"], 500);

        // Resetting the connection drops its held bytes, and counts them.
        proxy.reset_connections();
        assert!(eventually(Duration::from_secs(2), || proxy.counters().connections_open == 0).await);
        let c = proxy.counters();
        assert_eq!((c.ab.discarded_bytes, c.ab.queued_bytes), (500, 0));
        drop((client, server));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_applies_partial_updates_and_faults() {
    bounded(async {
        let proxy = proxy(echo_server().await, LinkSettings::profile("regional").unwrap()).await;
        let control = ControlClient::new(proxy.control_addr().unwrap());

        // Partial update with human-readable values: only the given fields change.
        let body = r#"{"delay_ba_us": "3ms", "bandwidth_ab_bps": "100Mbit"}"#;
        let raw = control.request("PUT", "/link", Some(body.into())).await.unwrap();
        assert_eq!(raw["settings"]["delay_ba_us"], 3000);
        let s = proxy.settings();
        assert_eq!(s.delay_ab, 10 * MS);
        assert_eq!(s.delay_ba, 3 * MS);
        assert_eq!(s.bandwidth_ab, Bandwidth::mbit(100));
        assert_eq!(s.bandwidth_ba, Bandwidth::gbit(1));
        // POST works like PUT; null means unlimited.
        control.request("POST", "/link", Some(r#"{"bandwidth_bps": null}"#.into())).await.unwrap();
        assert_eq!(proxy.settings().bandwidth_ab, Bandwidth::Unlimited);

        // An empty partition body means hold, both ways.
        let raw = control.request("POST", "/partition", None).await.unwrap();
        assert_eq!(raw["partition"]["ab"], "hold");
        assert_eq!(raw["partition"]["ba"], "hold");
        control.heal().await.unwrap();
        let status = control.partition(PartitionMode::Reset, Direction::Ba).await.unwrap();
        assert_eq!(status.partition.ba, Flow::Reset);
        assert_eq!(status.partition.ab, Flow::Open);
        assert!(control.heal().await.unwrap().partition.is_healed());

        let mut stream = connect(proxy.local_addr()).await;
        ping(&mut stream, 8).await;
        assert_eq!(control.reset().await.unwrap().counters.connections_reset, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_rejects_bad_requests_with_a_reason() {
    bounded(async {
        let proxy = proxy(echo_server().await, LinkSettings::default()).await;
        let control = ControlClient::new(proxy.control_addr().unwrap());
        let cases = [
            ("PUT", "/link", "{not json", 400, "invalid request body"),
            ("PUT", "/link", r#"{"rtt": 5}"#, 400, "unknown field"),
            ("PUT", "/link", r#"{"rtt_us": "fast"}"#, 400, "fast"),
            ("PUT", "/link", r#"{"bandwidth_bps": 10}"#, 422, "minimum"),
            ("PUT", "/link", r#"{"profile": "moon"}"#, 422, "unknown profile"),
            ("POST", "/partition", r#"{"mode": "explode"}"#, 400, "unknown variant"),
            ("POST", "/partition", r#"{"direction": "up"}"#, 400, "unknown variant"),
        ];
        for (method, path, body, status, reason) in cases {
            match control.request(method, path, Some(body.into())).await {
                Err(ControlError::Status { status: got, message }) => {
                    assert_eq!(got, status, "{body}: {message}");
                    assert!(message.contains(reason), "{body}: {message}");
                }
                other => panic!("{body}: expected an error status, got {other:?}"),
            }
        }
        let huge = format!(r#"{{"profile": "{}"}}"#, "x".repeat(CONTROL_BODY_BYTES_MAX));
        match control.request("PUT", "/link", Some(huge)).await {
            Err(ControlError::Status { status, .. }) => assert_eq!(status, 413),
            other => panic!("expected 413, got {other:?}"),
        }
        match control.request("GET", "/nowhere", None).await {
            Err(ControlError::Status { status, .. }) => assert_eq!(status, 404),
            other => panic!("expected 404, got {other:?}"),
        }
        // Nothing changed.
        assert_eq!(proxy.settings(), LinkSettings::default());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subcommands_drive_a_running_simulator() {
    bounded(async {
        let proxy = proxy(echo_server().await, LinkSettings::profile("lan").unwrap()).await;
        let control = proxy.control_addr().unwrap();

        let link = LinkArgs { rtt: Some(80 * MS), bandwidth_ba: Some(Bandwidth::mbit(500)), ..LinkArgs::default() };
        cli::run(command(SimCommand::Set { control, link })).await.unwrap();
        let s = proxy.settings();
        assert_eq!(s.rtt(), 80 * MS);
        assert_eq!(s.bandwidth_ba, Bandwidth::mbit(500));
        assert_eq!(s.bandwidth_ab, Bandwidth::gbit(10), "unchanged");

        let link = LinkArgs { profile: Some("intercontinental".into()), ..LinkArgs::default() };
        cli::run(command(SimCommand::Set { control, link })).await.unwrap();
        assert_eq!(proxy.settings(), LinkSettings::profile("intercontinental").unwrap());

        let partition = SimCommand::Partition { control, mode: PartitionMode::Hold, direction: Direction::Ab };
        cli::run(command(partition)).await.unwrap();
        assert_eq!(proxy.partition_state().ab, Flow::Hold);
        assert_eq!(proxy.partition_state().ba, Flow::Open);

        cli::run(command(SimCommand::Heal { control })).await.unwrap();
        assert!(proxy.partition_state().is_healed());

        let mut stream = connect(proxy.local_addr()).await;
        ping(&mut stream, 8).await;
        cli::run(command(SimCommand::Reset { control })).await.unwrap();
        assert_eq!(proxy.counters().connections_reset, 1);

        let status = cli::execute(&SimCommand::Status { control }).await.unwrap();
        assert_eq!(status["settings"]["delay_ab_us"], 40_000);
        assert_eq!(status["counters"]["connections_reset"], 1);
        cli::run(command(SimCommand::Status { control })).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_errors_instead_of_panicking() {
    bounded(async {
        // Nothing listens on this port.
        let (listener, dead) = upstream_listener().await;
        drop(listener);
        let error = cli::run(command(SimCommand::Status { control: dead })).await.unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("GET /link") && text.contains(&dead.to_string()), "{text}");

        let proxy = proxy(echo_server().await, LinkSettings::default()).await;
        let control = proxy.control_addr().unwrap();
        let empty = SimCommand::Set { control, link: LinkArgs::default() };
        assert!(cli::run(command(empty)).await.is_err(), "set without flags");
        let slow = LinkArgs { bandwidth: Some(Bandwidth::BitsPerSecond(1)), ..LinkArgs::default() };
        let error = cli::run(command(SimCommand::Set { control, link: slow })).await.unwrap_err();
        assert!(format!("{error:#}").contains("422"), "{error:#}");

        // Running the proxy without --listen/--to is an error, not a panic.
        let mut args = command(SimCommand::Heal { control });
        args.command = None;
        assert!(cli::run(args).await.is_err());
    })
    .await;
}
