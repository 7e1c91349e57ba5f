//! Goal: the bandwidth cap holds, is shared by the connections of a direction, and a slow
//! receiver makes the proxy push back instead of buffering without bound.
//! Method: bulk transfers to a sink behind the proxy on 127.0.0.1, timed from the first write
//! to the sink's end of stream; queue counters read from the handle.

mod common;

use std::time::{Duration, Instant};

use common::*;
use geomirror_sim::limits::DIRECTION_QUEUE_BYTES_MAX;
use geomirror_sim::{Bandwidth, LinkSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one connection to its end; returns the byte count and when the end arrived.
async fn drain(mut stream: TcpStream) -> (u64, Instant) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf).await.unwrap() {
            0 => return (total, Instant::now()),
            n => total += n as u64,
        }
    }
}

/// Sends `bytes` on a fresh connection through the proxy and closes it.
async fn send(addr: std::net::SocketAddr, bytes: usize) {
    let mut stream = connect(addr).await;
    let block = vec![0xa5u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len());
        stream.write_all(&block[..n]).await.unwrap();
        left -= n;
    }
    stream.shutdown().await.unwrap();
}

fn capped(bandwidth: Bandwidth, delay: Duration) -> LinkSettings {
    LinkSettings { delay_ab: delay, delay_ba: delay, bandwidth_ab: bandwidth, bandwidth_ba: bandwidth, ..LinkSettings::default() }
}

fn mbit_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_through_a_capped_link_is_within_10_percent_of_the_cap() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let delay = 5 * MS;
        let proxy = proxy(addr, capped(Bandwidth::mbit(80), delay)).await;
        let bytes = 4 * 1024 * 1024;
        let start = Instant::now();
        let sender = tokio::spawn(send(proxy.local_addr(), bytes));
        let (server, _) = upstream.accept().await.unwrap();
        let (received, end) = drain(server).await;
        sender.await.unwrap();
        assert_eq!(received, bytes as u64);
        // Serialization time is what remains after the one-way propagation delay.
        let rate = mbit_per_s(received, end - start - delay);
        eprintln!("80 Mbit/s link carried {rate:.1} Mbit/s");
        assert!((72.0..=88.0).contains(&rate), "{rate:.1} Mbit/s is not within 10% of 80");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_one_direction_share_its_bandwidth() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let proxy = proxy(addr, capped(Bandwidth::mbit(80), MS)).await;
        let bytes = 2 * 1024 * 1024;
        let start = Instant::now();
        let senders = [tokio::spawn(send(proxy.local_addr(), bytes)), tokio::spawn(send(proxy.local_addr(), bytes))];
        let mut sinks = Vec::new();
        for _ in 0..2 {
            let (server, _) = upstream.accept().await.unwrap();
            sinks.push(tokio::spawn(drain(server)));
        }
        let mut last_end = start;
        for sink in sinks {
            let (received, end) = sink.await.unwrap();
            assert_eq!(received, bytes as u64);
            last_end = last_end.max(end);
        }
        for sender in senders {
            sender.await.unwrap();
        }
        // Two connections of 2 MiB each take as long as one of 4 MiB: about 0.42 s, not 0.21.
        let rate = mbit_per_s(2 * bytes as u64, last_end - start - MS);
        eprintln!("two connections together carried {rate:.1} Mbit/s over an 80 Mbit/s link");
        assert!((72.0..=88.0).contains(&rate), "aggregate {rate:.1} Mbit/s, cap 80");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_direction_has_its_own_cap() {
    bounded(async {
        let listener = TcpListener::bind(localhost()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = LinkSettings { bandwidth_ab: Bandwidth::mbit(400), bandwidth_ba: Bandwidth::mbit(40), ..LinkSettings::default() };
        let proxy = proxy(addr, settings).await;
        let bytes = 2 * 1024 * 1024;
        // The upstream sends, the client receives: the b->a cap applies.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(&vec![1u8; bytes]).await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        });
        let start = Instant::now();
        let client = connect(proxy.local_addr()).await;
        let (received, end) = drain(client).await;
        drop(server.await.unwrap());
        assert_eq!(received, bytes as u64);
        let rate = mbit_per_s(received, end - start);
        eprintln!("40 Mbit/s b->a direction carried {rate:.1} Mbit/s");
        assert!((36.0..=44.0).contains(&rate), "{rate:.1} Mbit/s, cap 40");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_does_not_read_gets_backpressure_not_unbounded_buffering() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let proxy = proxy(addr, LinkSettings::default()).await;
        let Ends { client, mut server } = connect_through(&proxy, &upstream).await;

        // Far more than the queue plus every kernel buffer on the way.
        let total: usize = 96 * 1024 * 1024;
        let writer = tokio::spawn(async move {
            let mut client = client;
            let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            for _ in 0..total / block.len() {
                client.write_all(&block).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });

        // The proxy fills its queue for this direction and stops there.
        assert!(
            eventually(Duration::from_secs(3), || {
                proxy.counters().ab.queued_bytes as usize > DIRECTION_QUEUE_BYTES_MAX - 2 * 64 * 1024
            })
            .await,
            "queue never filled: {:?}",
            proxy.counters().ab
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let queued = proxy.counters().ab.queued_bytes as usize;
        assert!(queued <= DIRECTION_QUEUE_BYTES_MAX, "queued {queued} bytes");
        assert!(!writer.is_finished(), "the sender should be blocked by backpressure");

        // Once the receiver reads, everything arrives, intact and in order.
        let mut buf = vec![0u8; 256 * 1024];
        let mut offset = 0usize;
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (i, byte) in buf[..n].iter().enumerate() {
                let expected = (((offset + i) % (64 * 1024)) % 251) as u8;
                assert_eq!(*byte, expected, "corrupted at byte {}", offset + i);
            }
            offset += n;
        }
        writer.await.unwrap();
        assert_eq!(offset, total);
        let counters = proxy.counters();
        assert_eq!(counters.ab.delivered_bytes, total as u64);
        assert_eq!(counters.ab.queued_bytes, 0);
    })
    .await;
}
