//! A small blocking NBD client for tests: fixed newstyle handshake with GO,
//! structured or simple replies, one request at a time (or raw bytes).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use geomirror_wire::nbd::{self as w, Command, InfoRequest, ReplyHeader, Request, chunk, handshake, opt, rep};

pub struct NbdClient {
    stream: TcpStream,
    pub size: u64,
    pub flags: u16,
    structured: bool,
    cookie: u64,
}

/// The outcome of one request: data for reads, or an NBD errno.
pub type NbdResult<T> = Result<T, u32>;

impl NbdClient {
    /// Connects and negotiates `export` (structured replies if asked).
    pub fn connect(addr: SocketAddr, export: &str, structured: bool) -> std::io::Result<NbdClient> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        w::decode_greeting(&greeting).map_err(std::io::Error::other)?;
        stream.write_all(&(handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES).to_be_bytes())?;
        if structured {
            let mut out = BytesMut::new();
            w::encode_option(&mut out, opt::STRUCTURED_REPLY, &[]);
            stream.write_all(&out)?;
            let (h, _) = read_option_reply(&mut stream)?;
            if h.reply_type != rep::ACK {
                return Err(std::io::Error::other("structured replies refused"));
            }
        }
        let mut payload = BytesMut::new();
        w::encode_info_request(&mut payload, &InfoRequest { name: export.into(), requests: vec![] });
        let mut out = BytesMut::new();
        w::encode_option(&mut out, opt::GO, &payload);
        stream.write_all(&out)?;
        let (mut size, mut flags) = (None, 0);
        loop {
            let (h, body) = read_option_reply(&mut stream)?;
            match h.reply_type {
                rep::ACK => break,
                rep::INFO => {
                    if let Ok(w::Info::Export { size: s, flags: f }) = w::decode_info(&body) {
                        size = Some(s);
                        flags = f;
                    }
                }
                t if rep::is_error(t) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("GO refused ({t:#x}): {}", String::from_utf8_lossy(&body)),
                    ));
                }
                _ => {}
            }
        }
        let size = size.ok_or_else(|| std::io::Error::other("no NBD_INFO_EXPORT"))?;
        Ok(NbdClient { stream, size, flags, structured, cookie: 0 })
    }

    fn send(&mut self, command: Command, flags: u16, offset: u64, length: u32, payload: &[u8]) -> std::io::Result<u64> {
        self.cookie += 1;
        let mut out = BytesMut::with_capacity(28 + payload.len());
        w::encode_request(&mut out, &Request { flags, command, cookie: self.cookie, offset, length });
        out.extend_from_slice(payload);
        self.stream.write_all(&out)?;
        Ok(self.cookie)
    }

    /// Reads one complete reply; returns data (for reads) or the errno.
    fn receive(&mut self, cookie: u64, read_len: Option<u32>) -> std::io::Result<NbdResult<Vec<u8>>> {
        let mut data = Vec::new();
        loop {
            let mut head = [0u8; 20];
            self.stream.read_exact(&mut head[..16])?;
            let header = match w::decode_reply_header(&head[..16]) {
                Ok(h) => h,
                Err(w::DecodeError::Truncated { .. }) => {
                    self.stream.read_exact(&mut head[16..])?;
                    w::decode_reply_header(&head).map_err(std::io::Error::other)?
                }
                Err(e) => return Err(std::io::Error::other(e)),
            };
            match header {
                ReplyHeader::Simple { errno, cookie: c } => {
                    assert_eq!(c, cookie, "reply for another request");
                    if errno != 0 {
                        return Ok(Err(errno));
                    }
                    if let Some(len) = read_len {
                        data.resize(len as usize, 0);
                        self.stream.read_exact(&mut data)?;
                    }
                    return Ok(Ok(data));
                }
                ReplyHeader::Chunk { flags, chunk_type, cookie: c, length } => {
                    assert_eq!(c, cookie, "reply for another request");
                    let mut body = vec![0u8; length as usize];
                    self.stream.read_exact(&mut body)?;
                    let mut errno = None;
                    match chunk_type {
                        chunk::OFFSET_DATA => data.extend_from_slice(&body[8..]),
                        chunk::ERROR => errno = Some(u32::from_be_bytes(body[..4].try_into().unwrap())),
                        _ => {}
                    }
                    if flags & chunk::FLAG_DONE != 0 {
                        return Ok(match errno {
                            Some(e) => Err(e),
                            None => Ok(data),
                        });
                    }
                }
            }
        }
    }

    pub fn read(&mut self, offset: u64, length: u32) -> std::io::Result<NbdResult<Vec<u8>>> {
        let cookie = self.send(Command::Read, 0, offset, length, &[])?;
        self.receive(cookie, Some(length))
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> std::io::Result<NbdResult<()>> {
        let cookie = self.send(Command::Write, flags, offset, data.len() as u32, data)?;
        Ok(self.receive(cookie, None)?.map(|_| ()))
    }

    pub fn command(&mut self, command: Command, flags: u16, offset: u64, length: u32) -> std::io::Result<NbdResult<()>> {
        let cookie = self.send(command, flags, offset, length, &[])?;
        Ok(self.receive(cookie, None)?.map(|_| ()))
    }

    pub fn flush(&mut self) -> std::io::Result<NbdResult<()>> {
        self.command(Command::Flush, 0, 0, 0)
    }

    /// Sends raw bytes on the transmission socket.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// True once the server has closed the connection (reads EOF or reset).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    pub fn disconnect(mut self) {
        let _ = self.send(Command::Disc, 0, 0, 0, &[]);
    }
}

fn read_option_reply(stream: &mut TcpStream) -> std::io::Result<(w::OptionReplyHeader, Vec<u8>)> {
    let mut head = [0u8; w::OPTION_REPLY_HEADER_BYTES];
    stream.read_exact(&mut head)?;
    let h = w::decode_option_reply_header(&head).map_err(std::io::Error::other)?;
    if h.length > 1 << 20 {
        return Err(std::io::Error::other("option reply too large"));
    }
    let mut body = vec![0u8; h.length as usize];
    stream.read_exact(&mut body)?;
    Ok((h, body))
}
