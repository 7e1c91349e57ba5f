//! Goal: partitions, heal and resets do what the control API promises.
//! Method: the test holds both ends of a proxied connection (client and accepted upstream
//! socket) or uses an echo server, injects a fault through the handle, and checks which bytes
//! arrive, when, and how connections end.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::*;
use geomirror_sim::{Direction, Flow, LinkSettings, PartitionMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn delayed(one_way: Duration) -> LinkSettings {
    LinkSettings { delay_ab: one_way, delay_ba: one_way, ..LinkSettings::default() }
}

/// Connects to a proxy expected to reset the connection at once; true if it was reset or
/// closed within `within` (the reset may even beat `connect` itself).
async fn refused_within(addr: std::net::SocketAddr, within: Duration) -> bool {
    match TcpStream::connect(addr).await {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::ConnectionReset, "unexpected error {e}");
            true
        }
        Ok(mut stream) => ends_within(&mut stream, within).await,
    }
}

/// Reads until the connection ends; true if it ended (reset or closed) within `within`.
async fn ends_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let ended = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) => {
                    assert!(matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted), "unexpected error {e}");
                    return;
                }
            }
        }
    };
    tokio::time::timeout(within, ended).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_partition_holds_traffic_and_heal_delivers_it() {
    bounded(async {
        let one_way = 10 * MS;
        let proxy = proxy(echo_server().await, delayed(one_way)).await;
        let mut stream = connect(proxy.local_addr()).await;
        ping(&mut stream, 16).await;

        proxy.partition(PartitionMode::Hold, Direction::Both);
        assert_eq!(proxy.partition_state().ab, Flow::Hold);
        stream.write_all(b"held ping").await.unwrap();
        assert!(silent_for(&mut stream, 300 * MS).await, "echo came back during a partition");
        assert_eq!(proxy.counters().ab.queued_bytes, 9, "the ping waits inside the proxy");

        // A connection opened during the partition is accepted, but its bytes wait too.
        let mut late = connect(proxy.local_addr()).await;
        late.write_all(b"new").await.unwrap();
        assert!(silent_for(&mut late, 100 * MS).await);

        let healed = Instant::now();
        proxy.heal();
        let mut back = [0u8; 9];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"held ping");
        let mut back = [0u8; 3];
        late.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"new");
        // Held bytes are sent at heal, so they still cross the link both ways.
        let took = healed.elapsed();
        assert!(took >= 2 * one_way - MS, "delivered without the link delay: {took:?}");
        assert!(took < 2 * one_way + 50 * MS, "heal took {took:?}");
        assert_rtt_close(&mut stream, 5, 2 * one_way, "RTT after heal").await;
        assert_eq!(proxy.counters().connections_reset, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_flight_when_a_partition_starts_are_held_too() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let proxy = proxy(addr, delayed(200 * MS)).await;
        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;
        client.write_all(b"in flight").await.unwrap();
        tokio::time::sleep(50 * MS).await;
        proxy.partition(PartitionMode::Hold, Direction::Ab);
        assert!(silent_for(&mut server, 400 * MS).await, "in-flight bytes crossed a partition");
        proxy.heal();
        let mut buf = [0u8; 9];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"in flight");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_partition_blocks_only_its_direction() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let proxy = proxy(addr, delayed(2 * MS)).await;
        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;
        let mut buf = [0u8; 4];

        proxy.partition(PartitionMode::Hold, Direction::Ab);
        client.write_all(b"a->b").await.unwrap();
        server.write_all(b"b->a").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"b->a", "b->a flows while only a->b is cut");
        assert!(silent_for(&mut server, 200 * MS).await, "a->b crossed its partition");
        proxy.heal();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"a->b");

        proxy.partition(PartitionMode::Hold, Direction::Ba);
        assert_eq!(proxy.partition_state().ba, Flow::Hold);
        assert_eq!(proxy.partition_state().ab, Flow::Open);
        client.write_all(b"a->b").await.unwrap();
        server.write_all(b"b->a").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"a->b", "a->b flows while only b->a is cut");
        assert!(silent_for(&mut client, 200 * MS).await, "b->a crossed its partition");
        proxy.heal();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"b->a");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_partition_resets_existing_connections_and_refuses_new_ones() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let proxy = proxy(addr, delayed(MS)).await;
        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;

        proxy.partition(PartitionMode::Reset, Direction::Both);
        assert!(ends_within(&mut client, Duration::from_secs(2)).await, "client not reset");
        assert!(ends_within(&mut server, Duration::from_secs(2)).await, "upstream not reset");

        // New connections are accepted by the kernel, then reset at once; nothing reaches
        // the upstream.
        for _ in 0..3 {
            assert!(refused_within(proxy.local_addr(), Duration::from_secs(2)).await, "not refused");
        }
        assert!(
            tokio::time::timeout(100 * MS, upstream.accept()).await.is_err(),
            "a connection reached the upstream during a reset partition"
        );
        let counters = proxy.counters();
        assert_eq!(counters.connections_reset, 1);
        assert_eq!(counters.connections_refused, 3);
        assert!(eventually(Duration::from_secs(2), || proxy.counters().connections_open == 0).await);

        proxy.heal();
        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;
        client.write_all(b"ok").await.unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_resets_current_connections_but_accepts_new_ones() {
    bounded(async {
        let proxy = proxy(echo_server().await, delayed(MS)).await;
        let mut first = connect(proxy.local_addr()).await;
        let mut second = connect(proxy.local_addr()).await;
        ping(&mut first, 8).await;
        ping(&mut second, 8).await;

        assert_eq!(proxy.reset_connections(), 2);
        assert!(ends_within(&mut first, Duration::from_secs(2)).await);
        assert!(ends_within(&mut second, Duration::from_secs(2)).await);

        let mut third = connect(proxy.local_addr()).await;
        ping(&mut third, 8).await;
        let counters = proxy.counters();
        assert_eq!(counters.connections_reset, 2);
        assert_eq!(counters.connections_total, 3);
        assert_eq!(counters.connections_open, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_end_closes_the_other_after_the_delay() {
    bounded(async {
        let (upstream, addr) = upstream_listener().await;
        let proxy = proxy(addr, delayed(30 * MS)).await;
        let Ends { mut client, mut server } = connect_through(&proxy, &upstream).await;
        client.write_all(b"last words").await.unwrap();
        let closed = Instant::now();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        assert!(closed.elapsed() >= 29 * MS, "FIN overtook the delay");
        // Half-close: the other direction still works.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        assert!(eventually(Duration::from_secs(2), || proxy.counters().connections_open == 0).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_resets_the_client() {
    bounded(async {
        // Bind and drop a listener to get a port nobody listens on.
        let (listener, addr) = upstream_listener().await;
        drop(listener);
        let proxy = proxy(addr, LinkSettings::default()).await;
        assert!(refused_within(proxy.local_addr(), Duration::from_secs(2)).await);
        assert!(eventually(Duration::from_secs(2), || proxy.counters().connections_failed == 1).await);
        assert_eq!(proxy.counters().connections_total, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_resets_connections_and_stops_listening() {
    bounded(async {
        let proxy = proxy(echo_server().await, LinkSettings::default()).await;
        let addr = proxy.local_addr();
        let mut stream = connect(addr).await;
        ping(&mut stream, 8).await;
        let started = Instant::now();
        proxy.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(1), "shutdown took {:?}", started.elapsed());
        assert!(ends_within(&mut stream, Duration::from_secs(1)).await);
        assert!(TcpStream::connect(addr).await.is_err(), "still listening after shutdown");
    })
    .await;
}
