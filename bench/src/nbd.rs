//! A tiny blocking NBD client for the freshness probes: one connection,
//! fixed newstyle handshake with `NBD_OPT_GO`, simple replies, one request
//! at a time (`READ`, `WRITE`, `DISC`). Spawning `qemu-io` per probe would
//! cost tens of milliseconds per read; this costs one loopback round trip,
//! so a stale read can be polled every few milliseconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
/// Longest option reply payload accepted.
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// An open NBD connection to one export.
pub struct Client {
    stream: TcpStream,
    size: u64,
    next_handle: u64,
}

impl Client {
    /// Connects to `addr` (`127.0.0.1:PORT`) and opens export `name`.
    pub fn connect(addr: &str, name: &str) -> Result<Client> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect to NBD server {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut client = Client { stream, size: 0, next_handle: 1 };
        client.handshake(name).with_context(|| format!("NBD handshake with {addr} for export `{name}`"))?;
        Ok(client)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn handshake(&mut self, name: &str) -> Result<()> {
        let magic = self.u64()?;
        let opt_magic = self.u64()?;
        if magic != NBDMAGIC || opt_magic != IHAVEOPT {
            bail!("not a fixed newstyle NBD server (magic {magic:#x} {opt_magic:#x})");
        }
        let server_flags = self.u16()?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            bail!("server does not offer fixed newstyle negotiation");
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES));
        self.stream.write_all(&client_flags.to_be_bytes())?;
        self.stream.write_all(&go_option(name))?;
        loop {
            let (option, reply, data) = self.option_reply()?;
            if option != OPT_GO {
                bail!("reply to option {option}, expected GO ({OPT_GO})");
            }
            match reply {
                REP_ACK => break,
                REP_INFO => {
                    if let Some(size) = export_size(&data) {
                        self.size = size;
                    }
                }
                r if r & 0x8000_0000 != 0 => {
                    bail!("server refused the export (error reply {r:#x}): {}", String::from_utf8_lossy(&data));
                }
                _ => {} // other replies are informational
            }
        }
        if self.size == 0 {
            bail!("server sent no export size");
        }
        Ok(())
    }

    fn option_reply(&mut self) -> Result<(u32, u32, Vec<u8>)> {
        let magic = self.u64()?;
        if magic != OPT_REPLY_MAGIC {
            bail!("bad option reply magic {magic:#x}");
        }
        let option = self.u32()?;
        let reply = self.u32()?;
        let len = self.u32()?;
        if len > MAX_OPTION_REPLY {
            bail!("option reply of {len} bytes is too long");
        }
        let mut data = vec![0; len as usize];
        self.stream.read_exact(&mut data)?;
        Ok((option, reply, data))
    }

    /// Writes `data` at `offset` and waits for the reply.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let handle = self.send(CMD_WRITE, offset, data.len() as u32, data)?;
        self.reply(handle, &mut []).with_context(|| format!("NBD write of {} bytes at {offset}", data.len()))
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let handle = self.send(CMD_READ, offset, buf.len() as u32, &[])?;
        self.reply(handle, buf).with_context(|| format!("NBD read of {} bytes at {offset}", buf.len()))
    }

    fn send(&mut self, command: u16, offset: u64, length: u32, payload: &[u8]) -> Result<u64> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut request = request_header(command, handle, offset, length).to_vec();
        request.extend_from_slice(payload);
        self.stream.write_all(&request).context("send an NBD request")?;
        Ok(handle)
    }

    fn reply(&mut self, handle: u64, data: &mut [u8]) -> Result<()> {
        let magic = self.u32()?;
        if magic != SIMPLE_REPLY_MAGIC {
            bail!("unexpected reply magic {magic:#x} (structured replies were not negotiated)");
        }
        let error = self.u32()?;
        let got = self.u64()?;
        if got != handle {
            bail!("reply for handle {got}, expected {handle}");
        }
        if error != 0 {
            bail!("server returned error {error}");
        }
        self.stream.read_exact(data).context("read the reply payload")?;
        Ok(())
    }

    fn u16(&mut self) -> Result<u16> {
        let mut b = [0; 2];
        self.stream.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0; 4];
        self.stream.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut b = [0; 8];
        self.stream.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.stream.write_all(&request_header(CMD_DISC, 0, 0, 0));
    }
}

/// `NBD_OPT_GO` for export `name`, no information requests.
fn go_option(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(26 + name.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&OPT_GO.to_be_bytes());
    out.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// The size in an `NBD_INFO_EXPORT` reply payload.
fn export_size(info: &[u8]) -> Option<u64> {
    if info.len() >= 12 && u16::from_be_bytes([info[0], info[1]]) == INFO_EXPORT {
        Some(u64::from_be_bytes(info[2..10].try_into().ok()?))
    } else {
        None
    }
}

fn request_header(command: u16, handle: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&command.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&length.to_be_bytes());
    h
}

/// A small xorshift generator for probe patterns and offsets (no
/// dependency; quality is irrelevant here, only that patterns differ).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection NBD server over a 1 MiB in-memory disk, enough for
    /// the client's subset: fixed newstyle, GO, READ, WRITE, DISC.
    fn serve_one(listener: TcpListener, refuse: bool) {
        let (mut s, _) = listener.accept().unwrap();
        let mut disk = vec![0u8; 1 << 20];
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes()).unwrap();
        let mut b4 = [0u8; 4];
        let mut b8 = [0u8; 8];
        s.read_exact(&mut b4).unwrap();
        assert_eq!(u32::from_be_bytes(b4), 3, "client flags");
        s.read_exact(&mut b8).unwrap();
        assert_eq!(u64::from_be_bytes(b8), IHAVEOPT);
        s.read_exact(&mut b4).unwrap();
        assert_eq!(u32::from_be_bytes(b4), OPT_GO);
        s.read_exact(&mut b4).unwrap();
        let mut data = vec![0; u32::from_be_bytes(b4) as usize];
        s.read_exact(&mut data).unwrap();
        assert_eq!(&data[4..8], b"vol0");
        let reply = |s: &mut TcpStream, typ: u32, payload: &[u8]| {
            s.write_all(&OPT_REPLY_MAGIC.to_be_bytes()).unwrap();
            s.write_all(&OPT_GO.to_be_bytes()).unwrap();
            s.write_all(&typ.to_be_bytes()).unwrap();
            s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
            s.write_all(payload).unwrap();
        };
        if refuse {
            reply(&mut s, 0x8000_0006, b"no such export");
            return;
        }
        let mut info = vec![0, 0];
        info.extend_from_slice(&(disk.len() as u64).to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        reply(&mut s, REP_INFO, &info);
        reply(&mut s, REP_ACK, &[]);
        loop {
            let mut h = [0u8; 28];
            s.read_exact(&mut h).unwrap();
            assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), REQUEST_MAGIC);
            let cmd = u16::from_be_bytes([h[6], h[7]]);
            let handle = &h[8..16];
            let offset = u64::from_be_bytes(h[16..24].try_into().unwrap()) as usize;
            let len = u32::from_be_bytes(h[24..28].try_into().unwrap()) as usize;
            let head = |s: &mut TcpStream| {
                s.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes()).unwrap();
                s.write_all(&0u32.to_be_bytes()).unwrap();
                s.write_all(handle).unwrap();
            };
            match cmd {
                CMD_WRITE => {
                    s.read_exact(&mut disk[offset..offset + len]).unwrap();
                    head(&mut s);
                }
                CMD_READ => {
                    head(&mut s);
                    s.write_all(&disk[offset..offset + len]).unwrap();
                }
                CMD_DISC => return,
                other => panic!("unexpected command {other}"),
            }
        }
    }

    #[test]
    fn writes_and_reads_back_against_a_mock_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || serve_one(listener, false));
        let mut c = Client::connect(&addr, "vol0").unwrap();
        assert_eq!(c.size(), 1 << 20);
        let mut rng = XorShift::new(7);
        let mut pattern = vec![0u8; 4096];
        rng.fill(&mut pattern);
        c.write(8192, &pattern).unwrap();
        let mut back = vec![0u8; 4096];
        c.read(8192, &mut back).unwrap();
        assert_eq!(back, pattern);
        c.read(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_refused_export_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || serve_one(listener, true));
        let err = Client::connect(&addr, "vol0").err().unwrap();
        assert!(format!("{err:#}").contains("no such export"), "{err:#}");
        server.join().unwrap();
    }

    #[test]
    fn option_and_request_encodings() {
        let go = go_option("ab");
        assert_eq!(&go[..8], &IHAVEOPT.to_be_bytes());
        assert_eq!(u32::from_be_bytes(go[8..12].try_into().unwrap()), 7);
        assert_eq!(u32::from_be_bytes(go[12..16].try_into().unwrap()), 8);
        assert_eq!(&go[20..22], b"ab");
        assert_eq!(go.len(), 24);
        let h = request_header(CMD_WRITE, 9, 4096, 512);
        assert_eq!(&h[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(u64::from_be_bytes(h[16..24].try_into().unwrap()), 4096);
        let mut info = vec![0, 0];
        info.extend_from_slice(&5u64.to_be_bytes());
        info.extend_from_slice(&[0, 1]);
        assert_eq!(export_size(&info), Some(5));
        assert_eq!(export_size(&[0, 3, 0]), None);
        let (mut a, mut b) = (XorShift::new(1), XorShift::new(1));
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(a.next_u64(), XorShift::new(2).next_u64());
    }
}
