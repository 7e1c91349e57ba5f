//! Reads that know when their bytes arrived.
//!
//! A chunk's one-way delay runs from the moment the sender's bytes reached the simulator,
//! not from the moment the simulator's task got round to reading them: waking that task
//! (an idle CPU, a runtime thread) takes tens of microseconds on a small VM, which would be
//! added to every delay and every round trip. The kernel stamps each received segment
//! (`SO_TIMESTAMPNS`); a read reports the stamp of the last segment it consumed, so the
//! bytes before it are credited no earlier than they arrived. Credit is bounded by
//! [`ARRIVAL_CREDIT_MAX`]: bytes that waited in the socket because the simulator's queue
//! was full count as arriving when read, as they would queue at a real bottleneck. Bytes
//! that come without a stamp (the kernel switches stamping on host-wide a moment after the
//! first socket asks) count from the read.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::limits::ARRIVAL_CREDIT_MAX;

/// Asks the kernel to stamp received segments. Without it (an error is only logged by the
/// caller) reads carry no stamp and chunks count as arriving when read.
pub(crate) fn enable(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor the stream owns, with a pointer to a live c_int
    // and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Reads into `buf`; returns the byte count (0: end of stream) and how long before now the
/// last byte read arrived (zero without a stamp, at most [`ARRIVAL_CREDIT_MAX`]).
pub(crate) async fn read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Duration)> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_stamped(stream, buf)) {
            Ok((n, stamp)) => {
                let waited = stamp.and_then(|at| SystemTime::now().duration_since(at).ok()).unwrap_or_default();
                return Ok((n, waited.min(ARRIVAL_CREDIT_MAX)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One `recvmsg`: the bytes and the kernel's receive stamp, if it gave one.
fn recv_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for one timespec control message, 8-byte aligned as cmsg headers require.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both alive and of the
    // lengths given, for the duration of the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: walking the control buffer the kernel filled, with the libc macros, within
    // `msg_controllen`; the payload of an SCM_TIMESTAMPNS message is one timespec.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                if let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
                    stamp = Some(UNIX_EPOCH + Duration::new(secs, nanos));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Bytes written, then read only after a pause: the read reports about
    /// that pause. The kernel turns receive stamping on for the whole host
    /// a moment after the first socket asks (a deferred switch), so the
    /// first bytes may come unstamped: it tries a few times.
    #[tokio::test]
    async fn a_late_read_reports_how_long_the_bytes_waited() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        enable(&server).unwrap();
        let pause = Duration::from_millis(30);
        let expected = pause.min(ARRIVAL_CREDIT_MAX);
        let mut seen = Vec::new();
        for _ in 0..20 {
            client.write_all(b"hello").await.unwrap();
            std::thread::sleep(pause);
            let mut buf = [0u8; 16];
            let (n, waited) = read(&server, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"hello");
            if waited > Duration::ZERO {
                assert!(waited >= expected * 9 / 10 && waited <= ARRIVAL_CREDIT_MAX, "waited {waited:?}, expected about {expected:?}");
                return;
            }
            seen.push(waited);
        }
        panic!("no read carried a receive stamp: {seen:?}");
    }

    /// Without stamps enabled a read reports no wait.
    #[tokio::test]
    async fn without_stamps_a_read_reports_no_wait() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"x").await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut buf = [0u8; 4];
        let (n, waited) = read(&server, &mut buf).await.unwrap();
        assert_eq!((n, waited), (1, Duration::ZERO));
    }
}
