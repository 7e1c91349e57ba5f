//! Goal: the delay a client sees through the proxy is the configured one.
//! Method: an echo server behind the proxy on 127.0.0.1; the median of ten small ping-pongs
//! must be within 10% + 1 ms of the configured RTT; one-way delays are timed at both ends.

mod common;

use std::time::{Duration, Instant};

use common::*;
use geomirror_sim::client::ControlClient;
use geomirror_sim::{Bandwidth, LinkSettings, LinkUpdate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rtt_only(rtt: Duration) -> LinkSettings {
    LinkSettings::symmetric(rtt, Bandwidth::Unlimited, Duration::ZERO)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_matches_a_20ms_link() {
    bounded(async {
        let proxy = proxy(echo_server().await, rtt_only(20 * MS)).await;
        let mut stream = connect(proxy.local_addr()).await;
        assert_rtt_close(&mut stream, 10, 20 * MS, "20 ms link RTT").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_matches_a_50ms_link() {
    bounded(async {
        let proxy = proxy(echo_server().await, rtt_only(50 * MS)).await;
        let mut stream = connect(proxy.local_addr()).await;
        assert_rtt_close(&mut stream, 10, 50 * MS, "50 ms link RTT").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_give_their_round_trip() {
    bounded(async {
        let echo = echo_server().await;
        // The floor: loopback and the echo task alone, without the proxy.
        let direct = median_rtt(&mut connect(echo).await, 10).await;
        eprintln!("direct loopback echo RTT (no proxy): {direct:?}");
        for (name, rtt) in [("lan", Duration::from_micros(200)), ("metro", 2 * MS), ("regional", 20 * MS)] {
            let proxy = proxy(echo, LinkSettings::profile(name).unwrap()).await;
            let mut stream = connect(proxy.local_addr()).await;
            assert_rtt_close(&mut stream, 10, rtt, &format!("{name} profile RTT")).await;
            proxy.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asymmetric_delays_apply_to_their_own_direction() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let settings = LinkSettings { delay_ab: 30 * MS, delay_ba: 5 * MS, ..LinkSettings::default() };
        let proxy = proxy(addr, settings).await;
        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;
        let mut byte = [0u8; 1];
        // Up to three rounds of five samples (see `assert_rtt_close`).
        let (mut ab, mut ba) = (Vec::new(), Vec::new());
        for _attempt in 0..3 {
            ab.clear();
            ba.clear();
            for _ in 0..5 {
                let sent = Instant::now();
                client.write_all(b"a").await.unwrap();
                server.read_exact(&mut byte).await.unwrap();
                ab.push(sent.elapsed());
                let sent = Instant::now();
                server.write_all(b"b").await.unwrap();
                client.read_exact(&mut byte).await.unwrap();
                ba.push(sent.elapsed());
            }
            ab.sort();
            ba.sort();
            if within(ab[2], 30 * MS) && within(ba[2], 5 * MS) {
                break;
            }
        }
        assert_close(ab[2], 30 * MS, "one-way a->b");
        assert_close(ba[2], 5 * MS, "one-way b->a");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_varies_the_delay_but_never_reorders_bytes() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let settings = LinkSettings { delay_ab: 10 * MS, delay_ba: 10 * MS, jitter: 5 * MS, ..LinkSettings::default() };
        let proxy = proxy(addr, settings).await;
        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;

        // Many small writes, spaced so that most become separate chunks with their own jitter.
        let count: u32 = 400;
        let writer = tokio::spawn(async move {
            for i in 0..count {
                client.write_all(&i.to_be_bytes()).await.unwrap();
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            }
            client
        });
        let mut buf = [0u8; 4];
        for expected in 0..count {
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(u32::from_be_bytes(buf), expected, "bytes reordered");
        }
        let mut client = writer.await.unwrap();

        // One-way delays spread over [5, 15] ms: the samples must differ, and stay in bounds.
        let mut byte = [0u8; 1];
        let mut samples = Vec::new();
        for _ in 0..15 {
            let sent = Instant::now();
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
            samples.push(sent.elapsed());
            tokio::time::sleep(20 * MS).await;
        }
        samples.sort();
        eprintln!("jittered one-way delays: {samples:?}");
        // Nothing arrives before delay - jitter (less the timer's lead of at most 0.5 ms).
        assert!(samples[0] >= 4500 * MS / 1000, "below delay - jitter: {samples:?}");
        // One sample may be late from a scheduling hiccup on a busy machine; not two.
        assert!(samples[13] <= 17 * MS, "above delay + jitter: {samples:?}");
        assert!(samples[13] - samples[1] >= 2 * MS, "no visible jitter: {samples:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_link_changes_the_rtt_of_a_live_connection() {
    bounded(async {
        let proxy = proxy(echo_server().await, rtt_only(20 * MS)).await;
        let mut stream = connect(proxy.local_addr()).await;
        assert_rtt_close(&mut stream, 5, 20 * MS, "before PUT /link").await;

        let control = ControlClient::new(proxy.control_addr().unwrap());
        let update = LinkUpdate { rtt: Some(60 * MS), ..LinkUpdate::default() };
        let status = control.update(&update).await.unwrap();
        assert_eq!(status.settings.rtt(), 60 * MS);
        assert_rtt_close(&mut stream, 5, 60 * MS, "after PUT /link").await;
    })
    .await;
}
