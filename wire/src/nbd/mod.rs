//! The NBD host protocol (fixed newstyle handshake, simple and structured
//! replies), as encoders into `BytesMut` and decoders over byte slices.
//!
//! Written against the protocol specification (NetworkBlockDevice/nbd,
//! `doc/proto.md`). All integers are big-endian. The decoders check magic
//! numbers and lengths and never allocate more than [`STRING_BYTES_MAX`] for
//! a name; payload sizes are the caller's to bound (the server checks a
//! request's length against its advertised maximum before reading it).

use bytes::{BufMut, BytesMut};

/// "NBDMAGIC": first eight bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": second server greeting word, and prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Longest name or message accepted from a peer (the spec's MUST bound).
pub const STRING_BYTES_MAX: usize = 4096;
/// Longest option payload the server reads; a longer one is refused and the
/// connection closed (no legitimate option comes near it).
pub const OPTION_BYTES_MAX: u32 = 64 * 1024;
/// Size of a request header.
pub const REQUEST_HEADER_BYTES: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_BYTES: usize = 16;
/// Size of a structured reply chunk header.
pub const CHUNK_HEADER_BYTES: usize = 20;

/// Handshake flags (server, 16 bits).
pub mod handshake {
    /// The server speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// The server may omit the 124 zero bytes after EXPORT_NAME.
    pub const NO_ZEROES: u16 = 1 << 1;
    /// Client flag: fixed newstyle understood.
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// Client flag: no zero padding wanted.
    pub const C_NO_ZEROES: u32 = 1 << 1;
}

/// Option codes (client to server during the handshake).
pub mod opt {
    /// Choose an export, old style: no error possible, reply is size + flags.
    pub const EXPORT_NAME: u32 = 1;
    /// End the handshake.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Ask about an export.
    pub const INFO: u32 = 6;
    /// Ask about an export and enter transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Use extended headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// Done.
    pub const ACK: u32 = 1;
    /// One export in a LIST answer.
    pub const SERVER: u32 = 2;
    /// One information item in an INFO/GO answer.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    /// Option not supported.
    pub const ERR_UNSUP: u32 = ERR | 1;
    /// Forbidden by policy.
    pub const ERR_POLICY: u32 = ERR | 2;
    /// Syntactically or semantically invalid.
    pub const ERR_INVALID: u32 = ERR | 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = ERR | 4;
    /// TLS is required first.
    pub const ERR_TLS_REQD: u32 = ERR | 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = ERR | 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = ERR | 7;
    /// Block size information must be requested.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR | 8;
    /// Request too big.
    pub const ERR_TOO_BIG: u32 = ERR | 9;

    /// Whether a reply type is an error.
    pub fn is_error(reply_type: u32) -> bool {
        reply_type & ERR != 0
    }
}

/// Information types in `NBD_REP_INFO`.
pub mod info {
    /// Size and transmission flags (always sent).
    pub const EXPORT: u16 = 0;
    /// Canonical name.
    pub const NAME: u16 = 1;
    /// Description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (per export, 16 bits).
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// FLUSH is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// The FUA flag is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational medium.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// TRIM is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// The DF flag is supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections see each other's writes and flushes.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// CACHE is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// WRITE_ZEROES with FAST_ZERO is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command flags (per request, 16 bits).
pub mod cflag {
    /// Force unit access: durable before the reply.
    pub const FUA: u16 = 1 << 0;
    /// WRITE_ZEROES must not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// Don't fragment a structured read reply.
    pub const DF: u16 = 1 << 2;
    /// BLOCK_STATUS: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// WRITE_ZEROES: fail fast with ENOTSUP rather than write slowly.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended headers: the request carries a payload length.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// Flag: last chunk of this reply.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// No payload.
    pub const NONE: u16 = 0;
    /// Offset (64) followed by data.
    pub const OFFSET_DATA: u16 = 1;
    /// Offset (64) and length (32) of a hole.
    pub const OFFSET_HOLE: u16 = 2;
    /// Error (32), message length (16), message.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// As ERROR, plus the offset (64) it applies to.
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
    /// A metadata context's id (32), then (length 32, flags 32) descriptors.
    pub const BLOCK_STATUS: u16 = 5;
}

/// The `base:allocation` metadata context: its name and the flags of its
/// block status descriptors.
pub mod allocation {
    /// The context's name.
    pub const CONTEXT: &str = "base:allocation";
    /// Flag: the range is a hole (not allocated).
    pub const HOLE: u32 = 1 << 0;
    /// Flag: the range reads as zeroes.
    pub const ZERO: u32 = 1 << 1;
}

/// Most queries one `LIST`/`SET_META_CONTEXT` may carry.
pub const META_QUERIES_MAX: usize = 128;

/// The payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// The export the contexts are for.
    pub export: String,
    /// The queries (`namespace:` or `namespace:leaf`).
    pub queries: Vec<String>,
}

/// Decodes a meta context option's payload.
pub fn decode_meta_context_request(b: &[u8]) -> Result<MetaContextRequest, DecodeError> {
    need(b, 4)?;
    let name_len = be_u32(b, 0) as usize;
    if name_len > STRING_BYTES_MAX {
        return Err(DecodeError::TooLong { what: "export name", len: name_len, max: STRING_BYTES_MAX });
    }
    need(b, 4 + name_len + 4)?;
    let export = decode_string(&b[4..4 + name_len])?;
    let count = be_u32(b, 4 + name_len) as usize;
    if count > META_QUERIES_MAX {
        return Err(DecodeError::TooLong { what: "meta context query list", len: count, max: META_QUERIES_MAX });
    }
    let mut at = 8 + name_len;
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        need(b, at + 4)?;
        let len = be_u32(b, at) as usize;
        if len > STRING_BYTES_MAX {
            return Err(DecodeError::TooLong { what: "meta context query", len, max: STRING_BYTES_MAX });
        }
        need(b, at + 4 + len)?;
        queries.push(decode_string(&b[at + 4..at + 4 + len])?);
        at += 4 + len;
    }
    if at != b.len() {
        return Err(DecodeError::Malformed("bytes after the meta context queries"));
    }
    Ok(MetaContextRequest { export, queries })
}

/// Encodes a meta context option's payload (client side).
pub fn encode_meta_context_request(out: &mut BytesMut, request: &MetaContextRequest) {
    out.put_u32(request.export.len() as u32);
    out.put_slice(request.export.as_bytes());
    out.put_u32(request.queries.len() as u32);
    for q in &request.queries {
        out.put_u32(q.len() as u32);
        out.put_slice(q.as_bytes());
    }
}

/// The payload of an `NBD_REP_META_CONTEXT` reply: the id, then the name.
pub fn meta_context_payload(id: u32, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + name.len());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v
}

/// Encodes a final `BLOCK_STATUS` chunk for context `id`: `(length, flags)`
/// descriptors in order from the request's offset.
pub fn encode_block_status(out: &mut BytesMut, cookie: u64, id: u32, descriptors: &[(u32, u32)]) {
    encode_chunk_header(out, chunk::FLAG_DONE, chunk::BLOCK_STATUS, cookie, 4 + 8 * descriptors.len() as u32);
    out.put_u32(id);
    for (length, flags) in descriptors {
        out.put_u32(*length);
        out.put_u32(*flags);
    }
}

/// NBD error numbers (the protocol's own values, not the host's errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Errno {
    /// Operation not permitted.
    Perm = 1,
    /// I/O error.
    Io = 5,
    /// Out of memory.
    NoMem = 12,
    /// Invalid argument (out-of-range read, bad flags, unknown command).
    Inval = 22,
    /// No space (write past the end of the export).
    NoSpc = 28,
    /// Value too large (request longer than the maximum block size).
    Overflow = 75,
    /// Not supported (FAST_ZERO that cannot be fast).
    NotSup = 95,
    /// Server shutting down.
    Shutdown = 108,
}

/// A transmission command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes at `offset`.
    Read,
    /// Write the `length` bytes that follow the header.
    Write,
    /// Disconnect after in-flight requests finish.
    Disc,
    /// Make all completed writes durable.
    Flush,
    /// Discard a range (may read back as anything until written).
    Trim,
    /// Prefetch a range.
    Cache,
    /// Write zeroes to a range.
    WriteZeroes,
    /// Query allocation status.
    BlockStatus,
    /// Resize the export.
    Resize,
    /// A command this server does not know.
    Unknown(u16),
}

impl Command {
    /// The command's number on the wire.
    pub fn code(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::Cache => 5,
            Command::WriteZeroes => 6,
            Command::BlockStatus => 7,
            Command::Resize => 8,
            Command::Unknown(code) => code,
        }
    }

    /// The command for a wire number.
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            8 => Command::Resize,
            other => Command::Unknown(other),
        }
    }
}

/// A transmission request header (the payload of a WRITE follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags ([`cflag`]).
    pub flags: u16,
    /// What to do.
    pub command: Command,
    /// Opaque value echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// What is wrong with bytes received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A magic number did not match.
    #[error("bad magic: expected {expected:#x}, got {got:#x}")]
    BadMagic {
        /// What the protocol requires.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A length field exceeds its limit.
    #[error("{what} is {len} bytes, limit is {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Lengths inside a payload do not add up.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

fn need(bytes: &[u8], n: usize) -> Result<(), DecodeError> {
    if bytes.len() < n { Err(DecodeError::Truncated { need: n, have: bytes.len() }) } else { Ok(()) }
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

// ---------------------------------------------------------------- handshake

/// The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting(out: &mut BytesMut, flags: u16) {
    out.put_u64(NBDMAGIC);
    out.put_u64(IHAVEOPT);
    out.put_u16(flags);
}

/// Decodes the server greeting (client side); returns the handshake flags.
pub fn decode_greeting(b: &[u8]) -> Result<u16, DecodeError> {
    need(b, 18)?;
    check_magic64(NBDMAGIC, be_u64(b, 0))?;
    check_magic64(IHAVEOPT, be_u64(b, 8))?;
    Ok(be_u16(b, 16))
}

fn check_magic64(expected: u64, got: u64) -> Result<(), DecodeError> {
    if expected == got { Ok(()) } else { Err(DecodeError::BadMagic { expected, got }) }
}

/// The header of one client option: IHAVEOPT, option code, payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option ([`opt`]).
    pub code: u32,
    /// Bytes of payload that follow.
    pub length: u32,
}

/// Size of an option header.
pub const OPTION_HEADER_BYTES: usize = 16;

/// Decodes an option header (server side).
pub fn decode_option_header(b: &[u8]) -> Result<OptionHeader, DecodeError> {
    need(b, OPTION_HEADER_BYTES)?;
    check_magic64(IHAVEOPT, be_u64(b, 0))?;
    Ok(OptionHeader { code: be_u32(b, 8), length: be_u32(b, 12) })
}

/// Encodes a client option with its payload (client side).
pub fn encode_option(out: &mut BytesMut, code: u32, payload: &[u8]) {
    out.put_u64(IHAVEOPT);
    out.put_u32(code);
    out.put_u32(u32::try_from(payload.len()).expect("option payload fits u32"));
    out.put_slice(payload);
}

/// The payload of INFO and GO: an export name and the information wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (may be empty: the default export).
    pub name: String,
    /// Information types requested ([`info`]).
    pub requests: Vec<u16>,
}

/// Decodes an INFO/GO payload; every length is checked against the payload.
pub fn decode_info_request(b: &[u8]) -> Result<InfoRequest, DecodeError> {
    need(b, 4)?;
    let name_len = be_u32(b, 0) as usize;
    if name_len > STRING_BYTES_MAX {
        return Err(DecodeError::TooLong { what: "export name", len: name_len, max: STRING_BYTES_MAX });
    }
    need(b, 4 + name_len + 2)?;
    let name = decode_string(&b[4..4 + name_len])?;
    let count = be_u16(b, 4 + name_len) as usize;
    let rest = &b[4 + name_len + 2..];
    if rest.len() != count * 2 {
        return Err(DecodeError::Malformed("information request count"));
    }
    let requests = rest.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    Ok(InfoRequest { name, requests })
}

/// Encodes an INFO/GO payload (client side).
pub fn encode_info_request(out: &mut BytesMut, request: &InfoRequest) {
    out.put_u32(request.name.len() as u32);
    out.put_slice(request.name.as_bytes());
    out.put_u16(request.requests.len() as u16);
    for r in &request.requests {
        out.put_u16(*r);
    }
}

/// Decodes a name or message: UTF-8, no NUL, at most [`STRING_BYTES_MAX`].
pub fn decode_string(b: &[u8]) -> Result<String, DecodeError> {
    if b.len() > STRING_BYTES_MAX {
        return Err(DecodeError::TooLong { what: "string", len: b.len(), max: STRING_BYTES_MAX });
    }
    if b.contains(&0) {
        return Err(DecodeError::Malformed("string with NUL"));
    }
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed("string is not UTF-8"))
}

/// Encodes an option reply header and payload.
pub fn encode_option_reply(out: &mut BytesMut, option: u32, reply_type: u32, payload: &[u8]) {
    out.put_u64(OPTION_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply_type);
    out.put_u32(u32::try_from(payload.len()).expect("reply payload fits u32"));
    out.put_slice(payload);
}

/// An option reply header (client side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option answered.
    pub option: u32,
    /// [`rep`] type.
    pub reply_type: u32,
    /// Payload bytes that follow.
    pub length: u32,
}

/// Size of an option reply header.
pub const OPTION_REPLY_HEADER_BYTES: usize = 20;

/// Decodes an option reply header (client side).
pub fn decode_option_reply_header(b: &[u8]) -> Result<OptionReplyHeader, DecodeError> {
    need(b, OPTION_REPLY_HEADER_BYTES)?;
    check_magic64(OPTION_REPLY_MAGIC, be_u64(b, 0))?;
    Ok(OptionReplyHeader { option: be_u32(b, 8), reply_type: be_u32(b, 12), length: be_u32(b, 16) })
}

/// Payload of `NBD_INFO_EXPORT`.
pub fn info_export_payload(size: u64, flags: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&info::EXPORT.to_be_bytes());
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&flags.to_be_bytes());
    p
}

/// Payload of `NBD_INFO_NAME`.
pub fn info_name_payload(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + name.len());
    p.extend_from_slice(&info::NAME.to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p
}

/// Payload of `NBD_INFO_DESCRIPTION`.
pub fn info_description_payload(text: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + text.len());
    p.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
    p.extend_from_slice(text.as_bytes());
    p
}

/// Payload of `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size_payload(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(14);
    p.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    p.extend_from_slice(&minimum.to_be_bytes());
    p.extend_from_slice(&preferred.to_be_bytes());
    p.extend_from_slice(&maximum.to_be_bytes());
    p
}

/// Decoded `NBD_REP_INFO` payloads (client side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Info {
    /// Size and flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// Canonical name.
    Name(String),
    /// Description.
    Description(String),
    /// Block size constraints.
    BlockSize {
        /// Minimum.
        minimum: u32,
        /// Preferred.
        preferred: u32,
        /// Maximum.
        maximum: u32,
    },
    /// A type this decoder does not know.
    Unknown(u16),
}

/// Decodes an `NBD_REP_INFO` payload.
pub fn decode_info(b: &[u8]) -> Result<Info, DecodeError> {
    need(b, 2)?;
    match be_u16(b, 0) {
        info::EXPORT => {
            if b.len() != 12 {
                return Err(DecodeError::Malformed("NBD_INFO_EXPORT length"));
            }
            Ok(Info::Export { size: be_u64(b, 2), flags: be_u16(b, 10) })
        }
        info::NAME => Ok(Info::Name(decode_string(&b[2..])?)),
        info::DESCRIPTION => Ok(Info::Description(decode_string(&b[2..])?)),
        info::BLOCK_SIZE => {
            if b.len() != 14 {
                return Err(DecodeError::Malformed("NBD_INFO_BLOCK_SIZE length"));
            }
            Ok(Info::BlockSize { minimum: be_u32(b, 2), preferred: be_u32(b, 6), maximum: be_u32(b, 10) })
        }
        other => Ok(Info::Unknown(other)),
    }
}

/// Payload of one `NBD_REP_SERVER` entry in a LIST answer.
pub fn server_entry_payload(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + name.len());
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p
}

/// Decodes an `NBD_REP_SERVER` entry (client side): the export name.
pub fn decode_server_entry(b: &[u8]) -> Result<String, DecodeError> {
    need(b, 4)?;
    let len = be_u32(b, 0) as usize;
    if len > b.len() - 4 {
        return Err(DecodeError::Malformed("NBD_REP_SERVER name length"));
    }
    decode_string(&b[4..4 + len])
}

/// The reply to old-style EXPORT_NAME: size, flags, and 124 zeroes unless
/// the client asked for none.
pub fn encode_export_name_reply(out: &mut BytesMut, size: u64, flags: u16, no_zeroes: bool) {
    out.put_u64(size);
    out.put_u16(flags);
    if !no_zeroes {
        out.put_bytes(0, 124);
    }
}

// ------------------------------------------------------------- transmission

/// Decodes a request header; the magic is checked, the fields are not.
pub fn decode_request(b: &[u8]) -> Result<Request, DecodeError> {
    need(b, REQUEST_HEADER_BYTES)?;
    let magic = be_u32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(DecodeError::BadMagic { expected: REQUEST_MAGIC as u64, got: magic as u64 });
    }
    Ok(Request {
        flags: be_u16(b, 4),
        command: Command::from_code(be_u16(b, 6)),
        cookie: be_u64(b, 8),
        offset: be_u64(b, 16),
        length: be_u32(b, 24),
    })
}

/// Encodes a request header (client side); a WRITE's payload goes after it.
pub fn encode_request(out: &mut BytesMut, r: &Request) {
    out.put_u32(REQUEST_MAGIC);
    out.put_u16(r.flags);
    out.put_u16(r.command.code());
    out.put_u64(r.cookie);
    out.put_u64(r.offset);
    out.put_u32(r.length);
}

/// Encodes a simple reply header; `errno` 0 is success.
pub fn encode_simple_reply(out: &mut BytesMut, errno: u32, cookie: u64) {
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(errno);
    out.put_u64(cookie);
}

/// Encodes a structured chunk header; `length` bytes of payload follow.
pub fn encode_chunk_header(out: &mut BytesMut, flags: u16, chunk_type: u16, cookie: u64, length: u32) {
    out.put_u32(STRUCTURED_REPLY_MAGIC);
    out.put_u16(flags);
    out.put_u16(chunk_type);
    out.put_u64(cookie);
    out.put_u32(length);
}

/// Encodes the header of a final `OFFSET_DATA` chunk carrying `data_len`
/// bytes read at `offset`; the data follows it on the wire.
pub fn encode_read_data_header(out: &mut BytesMut, cookie: u64, offset: u64, data_len: u32) {
    encode_chunk_header(out, chunk::FLAG_DONE, chunk::OFFSET_DATA, cookie, data_len + 8);
    out.put_u64(offset);
}

/// Encodes a final structured `ERROR` chunk with a message.
pub fn encode_structured_error(out: &mut BytesMut, cookie: u64, errno: u32, message: &str) {
    let message = &message.as_bytes()[..message.len().min(STRING_BYTES_MAX)];
    encode_chunk_header(out, chunk::FLAG_DONE, chunk::ERROR, cookie, 6 + message.len() as u32);
    out.put_u32(errno);
    out.put_u16(message.len() as u16);
    out.put_slice(message);
}

/// A reply header as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (data of a successful READ follows).
    Simple {
        /// 0 or an [`Errno`] value.
        errno: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured chunk (`length` payload bytes follow).
    Chunk {
        /// [`chunk`] flags.
        flags: u16,
        /// [`chunk`] type.
        chunk_type: u16,
        /// The request's cookie.
        cookie: u64,
        /// Payload length.
        length: u32,
    },
}

/// Decodes a reply header; needs 16 bytes for a simple reply and 20 for a
/// chunk (returns `Truncated` asking for more when given 16 of a chunk).
pub fn decode_reply_header(b: &[u8]) -> Result<ReplyHeader, DecodeError> {
    need(b, 4)?;
    match be_u32(b, 0) {
        SIMPLE_REPLY_MAGIC => {
            need(b, SIMPLE_REPLY_BYTES)?;
            Ok(ReplyHeader::Simple { errno: be_u32(b, 4), cookie: be_u64(b, 8) })
        }
        STRUCTURED_REPLY_MAGIC => {
            need(b, CHUNK_HEADER_BYTES)?;
            Ok(ReplyHeader::Chunk { flags: be_u16(b, 4), chunk_type: be_u16(b, 6), cookie: be_u64(b, 8), length: be_u32(b, 16) })
        }
        got => Err(DecodeError::BadMagic { expected: SIMPLE_REPLY_MAGIC as u64, got: got as u64 }),
    }
}

#[cfg(test)]
mod tests;
