//! Bad input over NBD: garbage in the handshake, an oversized length, an
//! out-of-range request, unknown commands. Each gets an error reply or a
//! clean disconnect with a logged reason; the data is untouched and other
//! clients keep being served.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use common::nbd_client::NbdClient;
use common::*;
use geomirror_wire::nbd::{self as w, Command, Errno, Request, cflag};

const SIZE: u64 = 8 << 20;

fn setup() -> SingleNode {
    let n = SingleNode::start("vol0", "8MiB");
    let mut c = NbdClient::connect(n.node.nbd, "vol0", true).unwrap();
    c.write(0, &[0x5a; 65536], 0).unwrap().unwrap();
    c.write(SIZE - 4096, &[0xa5; 4096], 0).unwrap().unwrap();
    c.disconnect();
    n
}

fn assert_data_intact(n: &SingleNode) {
    for structured in [true, false] {
        let mut c = NbdClient::connect(n.node.nbd, "vol0", structured).unwrap();
        assert_eq!(c.read(0, 65536).unwrap().unwrap(), vec![0x5a; 65536]);
        assert_eq!(c.read(SIZE - 4096, 4096).unwrap().unwrap(), vec![0xa5; 4096]);
        assert_eq!(c.read(65536, 4096).unwrap().unwrap(), vec![0; 4096]);
        c.disconnect();
    }
}

fn closed_soon(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // greeting or replies before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn garbage_in_the_handshake_is_disconnected_and_others_are_served() {
    let n = setup();
    // Random bytes instead of client flags and options.
    let mut s = TcpStream::connect(n.node.nbd).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n garbage garbage garbage").unwrap();
    assert!(closed_soon(&mut s), "garbage must close the connection");
    // Valid flags, then an option with a bad magic.
    let mut s = TcpStream::connect(n.node.nbd).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&[0xde; 16]).unwrap();
    assert!(closed_soon(&mut s));
    // An option announcing a 4 GiB payload.
    let mut s = TcpStream::connect(n.node.nbd).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = BytesMut::new();
    opt.extend_from_slice(&w::IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&w::opt::GO.to_be_bytes());
    opt.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&opt).unwrap();
    assert!(closed_soon(&mut s));
    // GO with a malformed payload gets an error reply, not a crash, and
    // the client may go on to a good GO on the same connection.
    assert!(NbdClient::connect(n.node.nbd, "no-such-volume", true).is_err());
    assert_data_intact(&n);
    let logs = n.node.logs().join("\n");
    assert!(logs.contains("protocol violation"), "the reason must be logged:\n{logs}");
}

#[test]
fn oversized_and_out_of_range_requests_get_errors_and_change_nothing() {
    let n = setup();
    for structured in [true, false] {
        let mut c = NbdClient::connect(n.node.nbd, "vol0", structured).unwrap();
        // Reads past the end, straddling the end, overflowing u64, too long.
        assert_eq!(c.read(SIZE, 4096).unwrap(), Err(Errno::Inval as u32));
        assert_eq!(c.read(SIZE - 1, 2).unwrap(), Err(Errno::Inval as u32));
        assert_eq!(c.read(u64::MAX - 10, 4096).unwrap(), Err(Errno::Inval as u32));
        assert_eq!(c.read(0, 64 << 20).unwrap(), Err(Errno::Overflow as u32));
        assert_eq!(c.read(0, 0).unwrap(), Err(Errno::Inval as u32));
        // Writes past the end: the payload is consumed, ENOSPC, nothing written.
        assert_eq!(c.write(SIZE - 2048, &[0xee; 4096], 0).unwrap(), Err(Errno::NoSpc as u32));
        assert_eq!(c.command(Command::WriteZeroes, 0, SIZE - 4096, 8192).unwrap(), Err(Errno::NoSpc as u32));
        assert_eq!(c.command(Command::Trim, 0, SIZE, 4096).unwrap(), Err(Errno::Inval as u32));
        // Unknown and unadvertised commands.
        assert_eq!(c.command(Command::Unknown(77), 0, 0, 4096).unwrap(), Err(Errno::Inval as u32));
        assert_eq!(c.command(Command::BlockStatus, 0, 0, 4096).unwrap(), Err(Errno::Inval as u32));
        // The connection still works.
        assert_eq!(c.read(0, 4096).unwrap().unwrap(), vec![0x5a; 4096]);
        c.disconnect();
    }
    assert_data_intact(&n);
    // Each kind of refusal is traceable to a log line naming its reason.
    let logs = n.node.logs();
    for reason in
        ["a READ of length 0", "a READ longer than the maximum block size", "a command that was not advertised", "outside the volume"]
    {
        assert!(
            logs.iter().any(|l| l.contains("host request failed") && l.contains(reason)),
            "no log line for `{reason}`:\n{}",
            logs.join("\n")
        );
    }
}

#[test]
fn an_oversized_write_closes_only_that_connection() {
    let n = setup();
    let mut bystander = NbdClient::connect(n.node.nbd, "vol0", true).unwrap();
    let mut c = NbdClient::connect(n.node.nbd, "vol0", true).unwrap();
    let mut out = BytesMut::new();
    w::encode_request(&mut out, &Request { flags: cflag::FUA, command: Command::Write, cookie: 1, offset: 0, length: 256 << 20 });
    c.send_raw(&out).unwrap();
    c.send_raw(&[0xee; 65536]).unwrap_or(());
    assert!(c.is_closed_by_server());
    // A bad request magic mid-transmission closes too.
    let mut c = NbdClient::connect(n.node.nbd, "vol0", false).unwrap();
    c.send_raw(&[0xff; 28]).unwrap();
    assert!(c.is_closed_by_server());
    assert_eq!(bystander.read(0, 4096).unwrap().unwrap(), vec![0x5a; 4096]);
    assert_data_intact(&n);
    n.node.assert_no_unexpected_warnings(&["protocol violation"]);
}

#[test]
fn fast_zero_and_no_hole_are_honoured() {
    let n = setup();
    let mut c = NbdClient::connect(n.node.nbd, "vol0", true).unwrap();
    c.write(1 << 20, &[7; 8192], 0).unwrap().unwrap();
    // NO_HOLE keeps the range allocated; FAST_ZERO either succeeds quickly or says ENOTSUP.
    c.command(Command::WriteZeroes, cflag::NO_HOLE, 1 << 20, 4096).unwrap().unwrap();
    match c.command(Command::WriteZeroes, cflag::FAST_ZERO | cflag::FUA, (1 << 20) + 4096, 4096).unwrap() {
        Ok(()) => assert_eq!(c.read((1 << 20) + 4096, 4096).unwrap().unwrap(), vec![0; 4096]),
        Err(e) => assert_eq!(e, Errno::NotSup as u32),
    }
    assert_eq!(c.read(1 << 20, 4096).unwrap().unwrap(), vec![0; 4096]);
}
