//! The round trip of a link as two processes see it: one side sends a
//! 4 KiB message (a 4 KiB write's copy), the other answers 16 bytes as soon
//! as it has read it, the sender times each exchange. Over plain loopback
//! TCP that is the cost of the two hops and two wake-ups; through a
//! `geomirror sim` it is what the simulated WAN really takes for one round
//! trip, its configured delay plus its own forwarding (two more hops, its
//! timer, its wake-ups). A write that waits for the other site crosses the
//! same hops and wake-ups, so the `modes` targets can use it for the RTT
//! term.
//!
//! Plain blocking sockets and threads, no TLS: about the cheapest exchange
//! two processes that sleep while they wait can make (busy polling would
//! be faster, at a CPU each).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::stats::median;

/// Bytes sent each way per exchange.
pub const REQUEST_BYTES: usize = 4096;
pub const ANSWER_BYTES: usize = 16;
/// Most exchanges one measurement makes (a bound besides its duration).
pub const EXCHANGES_MAX: usize = 200_000;
/// How long either side waits for the other's bytes before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers every [`REQUEST_BYTES`] read with [`ANSWER_BYTES`], one
/// connection at a time, until dropped.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `127.0.0.1:0`.
    pub fn start() -> Result<EchoServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the round-trip echo server")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ping-echo".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    // A failed exchange ends that connection only; the
                    // measuring side reports it.
                    if let Ok(conn) = conn {
                        let _ = answer(conn);
                    }
                }
            })
            .context("start the round-trip echo thread")?;
        Ok(EchoServer { addr, stop, thread: Some(thread) })
    }

    /// Where to connect (directly or as a simulator's upstream).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag; if that cannot
        // connect, the thread is left behind rather than waited for.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut request = vec![0u8; REQUEST_BYTES];
    let reply = [0x5au8; ANSWER_BYTES];
    loop {
        match conn.read_exact(&mut request) {
            Ok(()) => conn.write_all(&reply)?,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// One measurement's figures, µs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RoundTrips {
    /// Exchanges timed (after the ramp).
    pub count: usize,
    pub p10_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
}

impl RoundTrips {
    /// Summarises exchange times in µs.
    pub fn of(mut micros: Vec<f64>) -> RoundTrips {
        micros.retain(|v| v.is_finite());
        micros.sort_by(f64::total_cmp);
        let at = |q: usize| (!micros.is_empty()).then(|| micros[(micros.len() - 1) * q / 10]);
        RoundTrips { count: micros.len(), p10_us: at(1), p50_us: median(&micros), p90_us: at(9) }
    }
}

/// Exchanges messages with an [`EchoServer`] at `addr` (or a simulator in
/// front of one), back to back, for `ramp` (not counted) and then `runtime`
/// or [`EXCHANGES_MAX`] exchanges, whichever comes first.
pub fn measure(addr: &str, ramp: Duration, runtime: Duration) -> Result<RoundTrips> {
    let mut conn = TcpStream::connect(addr).with_context(|| format!("connect to {addr} to time round trips"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let request = vec![0xa5u8; REQUEST_BYTES];
    let mut reply = [0u8; ANSWER_BYTES];
    let started = Instant::now();
    let mut micros = Vec::new();
    loop {
        let now = Instant::now();
        let since_start = now - started;
        if since_start >= ramp + runtime || micros.len() >= EXCHANGES_MAX {
            break;
        }
        conn.write_all(&request).with_context(|| format!("send a round-trip message to {addr}"))?;
        if let Err(e) = conn.read_exact(&mut reply) {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                bail!("no round-trip answer from {addr} within {IO_TIMEOUT:?}");
            }
            return Err(e).with_context(|| format!("read a round-trip answer from {addr}"));
        }
        if since_start >= ramp {
            micros.push(now.elapsed().as_secs_f64() * 1e6);
        }
    }
    if micros.is_empty() {
        bail!("no round trip to {addr} completed within {:?} after the ramp", runtime);
    }
    Ok(RoundTrips::of(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_exchange_times() {
        let r = RoundTrips::of((1..=11).rev().map(f64::from).chain([f64::NAN]).collect());
        assert_eq!(r.count, 11);
        assert_eq!((r.p10_us, r.p50_us, r.p90_us), (Some(2.0), Some(6.0), Some(10.0)));
        assert_eq!(RoundTrips::of(vec![]), RoundTrips::default());
    }

    #[test]
    fn times_round_trips_through_a_delaying_proxy() {
        // A proxy that holds each request 3 ms before passing it on: the
        // measured round trip must include the delay (a measurement that
        // timed only the send would not).
        let echo = EchoServer::start().unwrap();
        let upstream = echo.addr();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        let proxy = std::thread::spawn(move || {
            let (mut client, _) = listener.accept().unwrap();
            let mut server = TcpStream::connect(upstream).unwrap();
            let mut request = vec![0u8; REQUEST_BYTES];
            let mut reply = [0u8; ANSWER_BYTES];
            while client.read_exact(&mut request).is_ok() {
                std::thread::sleep(Duration::from_millis(3));
                server.write_all(&request).unwrap();
                server.read_exact(&mut reply).unwrap();
                client.write_all(&reply).unwrap();
            }
        });
        let r = measure(&proxy_addr.to_string(), Duration::from_millis(20), Duration::from_millis(200)).unwrap();
        assert!(r.count >= 10 && r.count <= 70, "{r:?}");
        assert!(r.p50_us.unwrap() >= 3_000.0, "{r:?}");
        let direct = measure(&upstream.to_string(), Duration::ZERO, Duration::from_millis(50)).unwrap();
        assert!(direct.p50_us.unwrap() < 3_000.0 && direct.count > r.count, "{direct:?}");
        proxy.join().unwrap();
    }
}
