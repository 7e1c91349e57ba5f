//! The fixed newstyle handshake: greeting, client flags, then options until
//! GO or EXPORT_NAME enters transmission (or ABORT ends it).
//!
//! Supported options: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
//! LIST_META_CONTEXT and SET_META_CONTEXT (the one context served is
//! `base:allocation`, for BLOCK_STATUS), and STARTTLS when TLS is
//! configured: the caller then upgrades the connection and negotiates again
//! over TLS (nothing negotiated before survives the upgrade). With TLS
//! required, every option but STARTTLS and ABORT is refused with
//! `NBD_REP_ERR_TLS_REQD` until then (no export name is shown). Others
//! (extended headers) get `NBD_REP_ERR_UNSUP` so clients fall back. A hostile handshake (bad magic, an option payload
//! beyond [`OPTION_BYTES_MAX`], endless options) closes the connection.

use std::sync::Arc;

use bytes::BytesMut;
use geomirror_wire::nbd::{
    self as w, InfoRequest, OPTION_BYTES_MAX, OPTION_HEADER_BYTES, allocation, handshake as hs, info, opt, rep, tflag,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Exports;
use crate::limits::NBD_HANDSHAKE_OPTIONS_MAX;
use crate::volume::Volume;

/// What the client chose.
pub struct Session {
    /// The export served.
    pub volume: Arc<Volume>,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// Whether the `base:allocation` context was selected (BLOCK_STATUS is
    /// answered for it, with id [`ALLOCATION_CONTEXT_ID`]).
    pub allocation: bool,
}

/// The id this server gives the `base:allocation` context.
pub const ALLOCATION_CONTEXT_ID: u32 = 1;

/// Whether `query` (of a LIST or SET_META_CONTEXT) names `base:allocation`;
/// for LIST, a bare `base:` lists the whole namespace.
fn names_allocation(query: &str, listing: bool) -> bool {
    query == allocation::CONTEXT || (listing && query == "base:")
}

/// How a handshake ended without error.
pub enum Outcome {
    /// The client entered transmission.
    Transmission(Session),
    /// The client sent ABORT.
    Aborted,
    /// The client asked for TLS and was told yes: upgrade the connection,
    /// then negotiate again over it.
    StartTls,
}

/// Where a handshake stands with TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsStage {
    /// What the node's config says.
    pub mode: geomirror_config::NbdTlsMode,
    /// The connection already runs over TLS.
    pub active: bool,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// EXPORT_NAME named an export we do not have (the option cannot carry an error).
    #[error("unknown export `{0}` requested with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    /// Too many options.
    #[error("more than {NBD_HANDSHAKE_OPTIONS_MAX} options in one handshake")]
    TooManyOptions,
}

impl HandshakeError {
    /// Whether the client misbehaved (as opposed to going away).
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, HandshakeError::Io(_))
    }
}

/// Transmission flags for an export.
pub fn transmission_flags(structured: bool) -> u16 {
    let mut flags = tflag::HAS_FLAGS
        | tflag::SEND_FLUSH
        | tflag::SEND_FUA
        | tflag::SEND_TRIM
        | tflag::SEND_WRITE_ZEROES
        | tflag::SEND_FAST_ZERO
        | tflag::CAN_MULTI_CONN;
    if structured {
        // Every read is answered with one chunk, so "don't fragment" holds.
        flags |= tflag::SEND_DF;
    }
    flags
}

/// Runs the handshake on a fresh connection (the greeting and the client's
/// flags), or its option phase again after a STARTTLS upgrade (`tls.active`,
/// with the client's `no_zeroes` from before).
pub async fn negotiate<R, W>(
    reader: &mut R,
    writer: &mut W,
    exports: &Exports,
    max_request_bytes: u32,
    tls: TlsStage,
    no_zeroes_after_tls: bool,
) -> Result<(Outcome, bool), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(256);
    let no_zeroes = if tls.active {
        no_zeroes_after_tls
    } else {
        w::encode_greeting(&mut out, hs::FIXED_NEWSTYLE | hs::NO_ZEROES);
        writer.write_all(&out).await?;
        writer.flush().await?;
        let client_flags = reader.read_u32().await?;
        let known = hs::C_FIXED_NEWSTYLE | hs::C_NO_ZEROES;
        if client_flags & !known != 0 {
            return Err(HandshakeError::Protocol(format!("unknown client flags {client_flags:#x}")));
        }
        client_flags & hs::C_NO_ZEROES != 0
    };
    let tls_required_now = tls.mode == geomirror_config::NbdTlsMode::Required && !tls.active;
    let mut structured = false;
    // The export the last SET_META_CONTEXT was for, and whether it chose
    // base:allocation (it holds only if the client then enters that export).
    let mut meta: Option<(String, bool)> = None;
    let chosen = |meta: &Option<(String, bool)>, export: &str| meta.as_ref().is_some_and(|(e, on)| *on && e == export);

    for _ in 0..NBD_HANDSHAKE_OPTIONS_MAX {
        let mut header = [0u8; OPTION_HEADER_BYTES];
        reader.read_exact(&mut header).await?;
        let header = w::decode_option_header(&header).map_err(|e| HandshakeError::Protocol(e.to_string()))?;
        if header.length > OPTION_BYTES_MAX {
            return Err(HandshakeError::Protocol(format!(
                "option {} carries {} bytes, limit is {OPTION_BYTES_MAX}",
                header.code, header.length
            )));
        }
        let mut payload = vec![0u8; header.length as usize];
        reader.read_exact(&mut payload).await?;

        out.clear();
        let code = header.code;
        let error = |out: &mut BytesMut, kind: u32, message: &str| w::encode_option_reply(out, code, kind, message.as_bytes());
        if tls_required_now && !matches!(code, opt::STARTTLS | opt::ABORT) {
            if code == opt::EXPORT_NAME {
                // It cannot carry an error: the connection closes.
                return Err(HandshakeError::Protocol("NBD_OPT_EXPORT_NAME before STARTTLS on a server that requires TLS".into()));
            }
            error(&mut out, rep::ERR_TLS_REQD, "this server requires TLS: send NBD_OPT_STARTTLS first");
            writer.write_all(&out).await?;
            writer.flush().await?;
            continue;
        }
        match code {
            opt::EXPORT_NAME => {
                let name = w::decode_string(&payload).map_err(|e| HandshakeError::Protocol(e.to_string()))?;
                let Some(volume) = exports.get(&name) else {
                    return Err(HandshakeError::UnknownExport(name));
                };
                w::encode_export_name_reply(&mut out, volume.size(), transmission_flags(structured), no_zeroes);
                writer.write_all(&out).await?;
                writer.flush().await?;
                let allocation = structured && chosen(&meta, &name);
                return Ok((Outcome::Transmission(Session { volume: volume.clone(), structured, allocation }), no_zeroes));
            }
            opt::ABORT => {
                w::encode_option_reply(&mut out, code, rep::ACK, &[]);
                // The client may already have closed; that is fine.
                let _ = writer.write_all(&out).await;
                let _ = writer.flush().await;
                return Ok((Outcome::Aborted, no_zeroes));
            }
            opt::LIST => {
                if payload.is_empty() {
                    for name in exports.names() {
                        w::encode_option_reply(&mut out, code, rep::SERVER, &w::server_entry_payload(name));
                    }
                    w::encode_option_reply(&mut out, code, rep::ACK, &[]);
                } else {
                    error(&mut out, rep::ERR_INVALID, "NBD_OPT_LIST takes no data");
                }
            }
            opt::STRUCTURED_REPLY => {
                if !payload.is_empty() {
                    error(&mut out, rep::ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
                } else if structured {
                    error(&mut out, rep::ERR_INVALID, "structured replies already negotiated");
                } else {
                    structured = true;
                    w::encode_option_reply(&mut out, code, rep::ACK, &[]);
                }
            }
            opt::INFO | opt::GO => match w::decode_info_request(&payload) {
                Err(e) => error(&mut out, rep::ERR_INVALID, &format!("malformed request: {e}")),
                Ok(request) => match exports.get(&request.name) {
                    None => error(&mut out, rep::ERR_UNKNOWN, &format!("no export named `{}`", request.name)),
                    Some(volume) => {
                        encode_export_info(&mut out, code, volume, &request, structured, max_request_bytes);
                        if code == opt::GO {
                            writer.write_all(&out).await?;
                            writer.flush().await?;
                            let allocation = structured && chosen(&meta, &request.name);
                            return Ok((Outcome::Transmission(Session { volume: volume.clone(), structured, allocation }), no_zeroes));
                        }
                    }
                },
            },
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => match w::decode_meta_context_request(&payload) {
                Err(e) => error(&mut out, rep::ERR_INVALID, &format!("malformed request: {e}")),
                Ok(_) if code == opt::SET_META_CONTEXT && !structured => {
                    error(&mut out, rep::ERR_INVALID, "NBD_OPT_SET_META_CONTEXT needs structured replies first")
                }
                Ok(request) if exports.get(&request.export).is_none() => {
                    error(&mut out, rep::ERR_UNKNOWN, &format!("no export named `{}`", request.export))
                }
                Ok(request) => {
                    let listing = code == opt::LIST_META_CONTEXT;
                    // An empty LIST asks for every context; an empty SET selects none.
                    let on = (listing && request.queries.is_empty()) || request.queries.iter().any(|q| names_allocation(q, listing));
                    if on {
                        w::encode_option_reply(
                            &mut out,
                            code,
                            rep::META_CONTEXT,
                            &w::meta_context_payload(ALLOCATION_CONTEXT_ID, allocation::CONTEXT),
                        );
                    }
                    if !listing {
                        meta = Some((request.export, on));
                    }
                    w::encode_option_reply(&mut out, code, rep::ACK, &[]);
                }
            },
            opt::STARTTLS if tls.mode == geomirror_config::NbdTlsMode::Off => {
                error(&mut out, rep::ERR_UNSUP, "TLS is not configured for NBD on this node")
            }
            opt::STARTTLS if tls.active => error(&mut out, rep::ERR_INVALID, "TLS is already negotiated"),
            opt::STARTTLS if !payload.is_empty() => error(&mut out, rep::ERR_INVALID, "NBD_OPT_STARTTLS takes no data"),
            opt::STARTTLS => {
                w::encode_option_reply(&mut out, code, rep::ACK, &[]);
                writer.write_all(&out).await?;
                writer.flush().await?;
                return Ok((Outcome::StartTls, no_zeroes));
            }
            _ => error(&mut out, rep::ERR_UNSUP, "option not supported"),
        }
        writer.write_all(&out).await?;
        writer.flush().await?;
    }
    Err(HandshakeError::TooManyOptions)
}

fn encode_export_info(out: &mut BytesMut, code: u32, volume: &Volume, request: &InfoRequest, structured: bool, max_request_bytes: u32) {
    w::encode_option_reply(out, code, rep::INFO, &w::info_export_payload(volume.size(), transmission_flags(structured)));
    if request.requests.contains(&info::NAME) {
        w::encode_option_reply(out, code, rep::INFO, &w::info_name_payload(volume.name()));
    }
    if request.requests.contains(&info::DESCRIPTION) {
        w::encode_option_reply(out, code, rep::INFO, &w::info_description_payload("geomirror volume"));
    }
    // Minimum 1: any byte range works; preferred: the tracking block, so
    // clients avoid partial-block writes; maximum: the request limit.
    let preferred = volume.meta().block_bytes;
    w::encode_option_reply(out, code, rep::INFO, &w::info_block_size_payload(1, preferred, max_request_bytes));
    w::encode_option_reply(out, code, rep::ACK, &[]);
}
